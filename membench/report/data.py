"""Read a results database into the frames the report draws (pandas only, no torch)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ..errors import UserError


@dataclass
class ReportData:
    runs: Any  # DataFrame, one row per run, with labels added
    layers: Any  # run_id, layer, idx, activation_bytes, recompute_bytes
    series: Any  # run_id, name, step, value
    db_path: str


def _cfg(text) -> dict:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _short(value) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _varying(dicts: list[dict]) -> list[str]:
    """Keys whose value differs between the dicts that have them."""
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({json.dumps(d[k], sort_keys=True, default=str) for d in dicts if k in d}) > 1]


ABBREV = {"num_hidden_layers": "L", "hidden_size": "h", "intermediate_size": "ffn", "num_attention_heads": "heads",
          "vocab_size": "vocab", "num_key_value_heads": "kv", "n_layer": "L", "n_embd": "h", "n_head": "heads",
          "ffn_dim": "ffn", "d_model": "h", "encoder_layers": "enc", "decoder_layers": "dec",
          "word_embed_proj_dim": "proj", "encoder_attention_heads": "heads", "decoder_attention_heads": "dheads",
          "encoder_ffn_dim": "ffn", "decoder_ffn_dim": "dffn", "max_position_embeddings": "pos"}


def load_report_data(db_path: str | os.PathLike) -> ReportData:
    from ..results import load, load_layers, load_series
    from ..results.schema import check_file

    check_file(db_path, must_exist=True)
    if os.path.getsize(db_path) == 0:
        raise UserError(f"{db_path} is empty: no runs to report (run `membench sweep` or `membench train` first)")
    runs = load(db_path)
    if runs.empty:
        raise UserError(f"{db_path} holds no runs to report (run `membench sweep` or `membench train` first)")
    layers, series = load_layers(db_path), load_series(db_path)
    add_labels(runs)
    return ReportData(runs, layers, series, str(db_path))


def add_labels(runs) -> None:
    """Columns the figures group by: task, model_label, method_label, device_label (in place)."""
    cfgs = [_cfg(c) for c in runs["config"]]
    runs["task"] = [c.get("task") or ("(memory only)" if k != "train" else "(unnamed task)")
                    for c, k in zip(cfgs, runs["kind"], strict=True)]
    runs["model_label"] = [_model_label(m, c) for m, c in zip(runs["model"], cfgs, strict=True)]
    # a method's label names the options that vary between its runs (lora r=8 / lora r=64)
    labels = []
    by_method: dict[str, list[dict]] = {}
    for m, c in zip(runs["method"], cfgs, strict=True):
        by_method.setdefault(str(m), []).append(_train_knobs(c))
    vary = {m: _varying(ds) for m, ds in by_method.items()}
    for m, c in zip(runs["method"], cfgs, strict=True):
        knobs = _train_knobs(c)
        extra = [f"{k}={_short(knobs.get(k))}" for k in vary[str(m)] if k in knobs]
        labels.append(str(m) + (f" ({' '.join(extra)})" if extra else ""))
    # a quantized base is part of what a line is (QLoRA beside LoRA on the same figure): 'lora · nf4 base'
    quants = runs["quant"] if "quant" in runs else [None] * len(runs)
    runs["method_label"] = [label + (f" · {q} base" if isinstance(q, str) and q else "")
                            for label, q in zip(labels, quants, strict=True)]
    names = runs["device_name"].fillna("").astype(str) if "device_name" in runs else [""] * len(runs)
    targets = runs["target"].fillna("").astype(str) if "target" in runs else [""] * len(runs)
    gpus = runs["gpu"].fillna("").astype(str) if "gpu" in runs else [""] * len(runs)
    runs["device_label"] = [device_label(d, n, t, g) for d, n, t, g in
                            zip(runs["device"].astype(str), names, targets, gpus, strict=True)]


def _train_knobs(cfg: dict) -> dict:
    knobs = dict(cfg.get("method_options") or {})
    for k in ("lr", "epochs", "seed", "batch_size", "limit", "max_length"):  # shown only where they vary
        if k in cfg and cfg.get("kind") == "train":
            knobs[k] = cfg[k]
    return knobs


def _model_label(model, cfg: dict) -> str:
    label = str(model)
    ov = cfg.get("overrides") or {}
    ov = {k: v for k, v in ov.items() if k != "num_labels"}
    if ov:
        label += " [" + " ".join(f"{ABBREV.get(k, k)}={_short(v)}" for k, v in sorted(ov.items())) + "]"
    if cfg.get("attn") and cfg.get("attn") != "sdpa":
        label += f" attn={cfg['attn']}"
    return label


def device_label(device: str, name: str, target: str = "", gpu: str = "") -> str:
    """What a run's figures describe: measured on a device, or predicted for a target (fake tensors)."""
    from ..backends import describe

    return describe(device, target, gpu, name=name, form="label")
