"""Write the figure tables of README.md and docs/ from measurements, never by hand.

    python benchmarks/doc_tables.py                  # measure everything, save the JSON, rewrite the docs
    python benchmarks/doc_tables.py memory fit       # only these measurements (and the tables they feed)
    python benchmarks/doc_tables.py --check          # re-render from the committed JSON; exit 1 if a doc differs
    python benchmarks/doc_tables.py --render         # re-render from the committed JSON into the docs
    python benchmarks/doc_tables.py --verify memory  # re-measure; exit 1 if a memory figure moved (slow)

A measurement (`memory`, `methods`, `fit`, `speed`, `chunks`, `recipes`, `validation`) saves its figures with their provenance
in docs/tables/<name>.json; each table is rendered from one of them and lives between
markers in a markdown file:

    <!-- membench:table NAME -->
    ...written by this script...
    <!-- /membench:table -->

so `tests/test_doc_tables.py` re-renders every table in a second and fails when a doc was
edited by hand, or when a renderer changed without the docs being rewritten. Memory figures
are predictions for the CLI's default target (CUDA on an A100 80GB, fake tensors) unless a row
says otherwise; MiB = 2^20 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from membench.units import mib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "tables"
GPU = "a100-80gb"

# ---- what is measured ---------------------------------------------------------------------------------------
# (model, batch, sequence, dtype) as in the MEFT paper's comparisons
MEMORY_SETTINGS = [("bert-base", 16, 512, "fp32"), ("roberta-large", 16, 512, "fp32"), ("opt-1.3b", 8, 512, "bf16"),
                   ("vit-base", 64, None, "fp32")]  # ViT: 224 px images, 197 tokens (the paper's image classification)
MEMORY_METHODS = ["full", "lora", "meft1", "meft2", "meft3"]
MEMORY_EXTRA = [("opt-1.3b", "meft1", {"frozen_bottom": 8, "plain_top": 8}),  # a partly reversible stack
                ("bert-base", "meft3", {"checkpoint_every": 4}), ("bert-base", "meft3", {"checkpoint_every": 2}),
                ("bert-base", "meft3", {"recon_dtype": "fp64"}),  # the numerical error bounds' memory
                ("opt-1.3b", "full+chunkloss", {}), ("opt-1.3b", "meft3+chunkloss", {})]  # the loss without logits
CPU_ROW = ("bert-base", 16, 512, "fp32")  # one CPU-target row, so readers see what the target changes
METHODS_SETTINGS = [("bert-base", 16, 512, "fp32"), ("opt-1.3b", 8, 512, "bf16"), ("vit-base", 64, None, "fp32")]
FIT = {"model": "opt-1.3b", "methods": ["full", "lora", "meft3", "full+ckpt"], "gpu": "rtx4090-24gb",
       "seq_len": 512, "dtype": "bf16"}
# docs/recipes.md: (model, method, batch, seq, gpu, [(precision, dtype or None, optimizer)]): the recipes people train
# with, predicted for each GPU (a 16 GB-class V100 has no bf16)
RECIPES = [
    ("bert-large", "full", 4, 512, "v100-32gb",
     [("32-true", None, "adamw"), ("16-true", None, "adamw"), ("16-mixed", None, "adamw"),
      ("16-mixed", None, "adafactor"), ("16-mixed", None, "adamw-8bit"), ("32-true", None, "adafactor"),
      ("32-true", None, "adamw-8bit"), ("32-true", None, "sgd-momentum")]),
    *[("llama-2-7b", "lora", 2, 512, gpu,
       [("bf16-true", None, "adamw"), ("bf16-mixed", "bf16", "adamw"), ("bf16-mixed", "bf16", "adamw-8bit"),
        ("bf16-mixed", "bf16", "paged-adamw-8bit"), ("bf16-mixed", "bf16", "adafactor"),
        ("bf16-mixed", None, "adamw")]) for gpu in ("a100-80gb", "rtx4090-24gb")],
]
# docs/validation.md: published real-GPU measurements and the settings their sources state. The published
# figure is the source's; membench predicts it from the stated setting; nothing is fitted to it.
PUBLISHED = [
    {"source": "Hugging Face transformers docs, 'Methods and tools for efficient training on a single GPU' "
               "(v4.2x; the same run in 'Model training anatomy'): Trainer, bert-large-uncased sequence "
               "classification, random tokens, 512 x 512, nvidia-ml-py `used` after `trainer.train()`",
     "setting": "bert-large full, fp32, b4 s512, eager attention (BERT had no SDPA then), AdamW, V100; the CUDA "
                "context the same page measured (1,343 MB after torch.ones(1).cuda())",
     "published_mib": 14949, "model": "bert-large", "method": "full", "batch_size": 4, "seq_len": 512,
     "kw": {"attn": "eager", "gpu": "v100-32gb", "context": "1343MiB"}},
    {"source": "the same page: per_device_train_batch_size=1, gradient_accumulation_steps=4",
     "setting": "as above, b1 with 4 accumulated micro-steps",
     "published_mib": 8681, "model": "bert-large", "method": "full", "batch_size": 1, "seq_len": 512,
     "kw": {"attn": "eager", "gpu": "v100-32gb", "context": "1343MiB", "grad_accum": 4}},
]
# Published outcomes (fits / out of memory) with their stated settings: a prediction must land on the same side of
# the GPU's memory. Hugging Face's QLoRA blog ("Making LLMs even more accessible with bitsandbytes, 4-bit quantization
# and QLoRA", 2023): TRL's SFTTrainer, llama-7b (the shapes of llama-2-7b), 1x T4 16 GB, batch 1, 4 accumulated
# micro-steps, AdamW. Not stated, so membench's defaults stand in: the LoRA (r 8 on q, v), full-length sequences,
# fp16 unquantized weights (transformers' default for 4-bit loading then), eager attention (no SDPA in 2023).
_T4 = {"gpu": "t4-16gb", "dtype": "fp16", "attn": "eager", "grad_accum": 4, "quant_compute_dtype": "bf16"}
PUBLISHED_OUTCOMES = [
    {"setting": f"llama-7b {label}, b1 x4 accumulated, s{seq}", "published": outcome, "model": "llama-2-7b",
     "method": "lora", "batch_size": 1, "seq_len": seq, "kw": {**_T4, "quant": kind, "kbit_ckpt": ckpt}}
    for label, kind, ckpt, seq, outcome in (
        ("4bit + NF4 + bf16 CD + no GC", "nf4", False, 512, "fits"),
        ("4bit + FP4 + bf16 CD + no GC", "fp4", False, 512, "fits"),
        ("4bit + NF4 + bf16 CD + no GC", "nf4", False, 1024, "out of memory"),
        ("4bit + FP4 + bf16 CD + no GC", "fp4", False, 1024, "out of memory"),
        ("4bit + NF4 + bf16 CD + GC", "nf4", True, 1024, "fits"))
]
OUTCOMES_SOURCE = ("Hugging Face blog 'Making LLMs even more accessible with bitsandbytes, 4-bit quantization and "
                   "QLoRA' (2023), its T4 table: TRL SFTTrainer, 1x NVIDIA T4 16 GB")
# QLoRA: README's fit row (a bf16 base beside it) and docs/methods.md's llama-2-7b table
QLORA_FIT = {"model": "llama-2-7b", "gpu": "rtx4090-24gb", "seq_len": 512, "dtype": "bf16", "method": "lora",
             "quant": {"quant": "nf4", "quant_double_quant": True}}
QLORA_SETTING = {"model": "llama-2-7b", "batch_size": 4, "seq_len": 512, "dtype": "bf16", "gpu": "a100-80gb"}
NF4 = {"quant": "nf4", "kbit_ckpt": False}
QLORA_ROWS = [("LoRA, bf16 base", "lora", {}), ("QLoRA nf4", "lora", NF4),
              ("QLoRA nf4 + double quant", "lora", {**NF4, "quant_double_quant": True}),
              ("QLoRA nf4 + ckpt (peft's default)", "lora", {"quant": "nf4"}),
              ("MEFT1, bf16 base", "meft1", {}), ("MEFT1, nf4 base", "meft1", NF4),
              ("MEFT3, nf4 base", "meft3", NF4)]
SPEED_MODELS = {"opt-1.3b": {"wall_s": 20.0, "rss_gib": 1.0}, "llama-2-7b": {"wall_s": 60.0, "rss_gib": None}}


def provenance() -> dict:
    import torch
    import transformers

    from membench.provenance import git_revision

    return {"date": time.strftime("%Y-%m-%d", time.gmtime()), "torch": torch.__version__,
            "transformers": transformers.__version__, "membench": git_revision(), "cpu_count": os.cpu_count()}


def _figures(r) -> dict:
    p = r.predicted_cuda
    return {"seq_len": r.seq_len, "activation_bytes": r.activation_bytes, "recompute_bytes": r.recompute_bytes,
            "peak_activation_bytes": r.peak_activation_bytes, "peak_phase": r.peak_phase,
            "num_params": r.num_params, "num_trainable_params": r.num_trainable_params, "target": r.target,
            "gpu": r.gpu, "max_allocated_bytes": p.max_allocated_bytes if p is not None else None,
            "max_reserved_bytes": p.max_reserved_bytes if p is not None else None,
            "sdpa_backends": p.sdpa_backends if p is not None else None}


def _profile(model, method, batch, seq, dtype, options=None, target=None) -> dict:
    from membench import profile

    t0 = time.perf_counter()
    r = profile(model, method, batch_size=batch, seq_len=seq, dtype=dtype, device="fake", target=target,
                gpu=GPU if target != "cpu" else None, method_options=options)
    print(f"  {model} {method} {options or ''} target {r.target}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return _figures(r)


def measure_memory() -> dict:
    rows = []
    for model, b, s, dtype in MEMORY_SETTINGS:
        for method in MEMORY_METHODS:
            rows.append({"model": model, "method": method, "batch_size": b, "dtype": dtype,
                         "options": {}, **_profile(model, method, b, s, dtype)})
    for model, method, options in MEMORY_EXTRA:  # (rows with a modifier or options)
        _m, b, s, dtype = next(x for x in MEMORY_SETTINGS if x[0] == model)
        rows.append({"model": model, "method": method, "batch_size": b, "dtype": dtype,
                     "options": options, **_profile(model, method, b, s, dtype, options)})
    model, b, s, dtype = CPU_ROW
    for method in MEMORY_METHODS:
        rows.append({"model": model, "method": method, "batch_size": b, "dtype": dtype,
                     "options": {}, **_profile(model, method, b, s, dtype, target="cpu")})
    return {"gpu": GPU, "rows": rows}


def method_specs() -> list[str]:
    """Every registered method (plugins included), then `full` and `lora` with every modifier."""
    from membench import methods

    specs = methods.names()
    for mod in methods.modifier_names():
        specs += [f"{base}+{mod}" for base in ("full", "lora") if base in specs]
    return ["full"] + [s for s in specs if s != "full"]


def measure_methods() -> dict:
    from membench.errors import UserError

    settings = []
    for model, b, s, dtype in METHODS_SETTINGS:
        rows = []
        for spec in method_specs():
            try:
                rows.append({"method": spec, **_profile(model, spec, b, s, dtype)})
            except (UserError, RuntimeError, ValueError, NotImplementedError) as exc:
                rows.append({"method": spec, "error": str(exc).splitlines()[0][:90]})
        seq = next((r["seq_len"] for r in rows if "seq_len" in r), s)
        settings.append({"model": model, "batch_size": b, "seq_len": seq, "dtype": dtype, "rows": rows})
    return {"gpu": GPU, "settings": settings}


CHUNK_SETTING = ("bert-base", 16, 512, "fp32")
CHUNK_COUNTS = (1, 4, 8)


def measure_chunks() -> dict:
    """MEFT's ffn_chunks: peak activation per k against full fine-tuning (CUDA target), and step time."""
    model, b, s, dtype = CHUNK_SETTING
    full = _profile(model, "full", b, s, dtype)
    rows = [{"method": v, "k": k, **_profile(model, v, b, s, dtype, {"ffn_chunks": k})}
            for v in ("meft1", "meft2", "meft3") for k in CHUNK_COUNTS]
    os.environ["MEMBENCH_MEFT_SPEED_SEQ"] = "512"  # chunks of realistic size (512 tokens at k = 8)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_meft_speed import measure_ffn_chunks

    speed = [measure_ffn_chunks(family, rounds=3) for family in ("bert", "opt")]
    return {"gpu": GPU, "model": model, "batch_size": b, "seq_len": s, "dtype": dtype, "full": full, "rows": rows,
            "speed": speed}


def measure_fit() -> dict:
    from membench.fit import fit

    t0 = time.perf_counter()
    from membench.spec import RunSpec

    rows = fit(RunSpec(model=FIT["model"], gpu=FIT["gpu"], dtype=FIT["dtype"]), FIT["methods"], seq_lens=[FIT["seq_len"]])
    return {**FIT, "headroom": 0.05, "wall_s": round(time.perf_counter() - t0, 1),
            "rows": [r.to_dict() for r in rows]}


def measure_qlora() -> dict:
    from membench import profile
    from membench.fit import fit
    from membench.spec import RunSpec

    q = QLORA_FIT
    fits = []
    # checkpointing beside quantization: peft's prepare_model_for_kbit_training turns it on, so the bf16 base is
    # shown with and without it (+ckpt), and the two effects are told apart
    for label, quant, method in (("bf16", {}, q["method"]), ("bf16", {}, q["method"] + "+ckpt"),
                                 ("nf4 + double quant (QLoRA)", q["quant"], q["method"])):
        t0 = time.perf_counter()
        row = fit(RunSpec(model=q["model"], gpu=q["gpu"], dtype=q["dtype"], **quant), [method],
                  seq_lens=[q["seq_len"]])[0]
        ckpt = "peft's default" if quant else ("+ckpt" if method.endswith("+ckpt") else "off")
        fits.append({"base": label, "checkpointing": ckpt, "wall_s": round(time.perf_counter() - t0, 1),
                     **row.to_dict()})  # (the row's "quant": its base's label)
    st, rows = QLORA_SETTING, []
    for label, method, quant in QLORA_ROWS:
        r = profile(st["model"], method, batch_size=st["batch_size"], seq_len=st["seq_len"], dtype=st["dtype"],
                    device="fake", gpu=st["gpu"], **quant)
        p = r.predicted_cuda
        rows.append({"label": label, "method": method, "quant": r.quant, "options": quant,
                     "param_bytes": r.param_bytes, "trainable": r.num_trainable_params,
                     "optimizer_bytes": r.optimizer_bytes, "activation_bytes": r.activation_bytes,
                     "peak_activation_bytes": r.peak_activation_bytes, "max_allocated_bytes": p.max_allocated_bytes,
                     "max_reserved_bytes": p.max_reserved_bytes, "nvidia_smi_bytes": p.nvidia_smi_bytes})
    return {"fit": {**{k: v for k, v in q.items() if k != "quant"}, "rows": fits}, "setting": st, "rows": rows}


def measure_recipes() -> dict:
    from membench import profile

    rows = []
    for model, method, batch, seq, gpu, recipes in RECIPES:
        for precision, dtype, optimizer in recipes:
            r = profile(model, method, batch_size=batch, seq_len=seq, device="fake", gpu=gpu, precision=precision,
                        dtype=dtype, optimizer=optimizer)
            p = r.predicted_cuda
            rows.append({"model": model, "method": method, "batch_size": batch, "seq_len": seq, "gpu": gpu,
                         "precision": r.precision, "dtype": r.dtype, "optimizer": r.optimizer,
                         "param_bytes": r.param_bytes, "optimizer_bytes": r.optimizer_bytes,
                         "peak_activation_bytes": r.peak_activation_bytes, "max_allocated_bytes": p.max_allocated_bytes,
                         "max_reserved_bytes": p.max_reserved_bytes, "paged_bytes": p.paged_bytes,
                         "context_bytes": p.context_bytes, "nvidia_smi_bytes": p.nvidia_smi_bytes,
                         "memory_bytes": _gpu_memory(gpu), "sdpa_backends": p.sdpa_backends})
    return {"rows": rows}


def measure_validation() -> dict:
    from membench import profile

    rows = []
    for case in PUBLISHED:
        r = profile(case["model"], case["method"], batch_size=case["batch_size"], seq_len=case["seq_len"],
                    device="fake", **case["kw"])
        p = r.predicted_cuda
        rows.append({k: case[k] for k in ("source", "setting", "published_mib")}
                    | {"max_allocated_bytes": p.max_allocated_bytes, "max_reserved_bytes": p.max_reserved_bytes,
                       "nvidia_smi_bytes": p.nvidia_smi_bytes, "sdpa_backends": p.sdpa_backends})
    outcomes = []
    for case in PUBLISHED_OUTCOMES:
        r = profile(case["model"], case["method"], batch_size=case["batch_size"], seq_len=case["seq_len"],
                    device="fake", **case["kw"])
        p = r.predicted_cuda
        outcomes.append({k: case[k] for k in ("setting", "published")}
                        | {"nvidia_smi_bytes": p.nvidia_smi_bytes, "max_allocated_bytes": p.max_allocated_bytes,
                           "memory_bytes": _gpu_memory(case["kw"]["gpu"]), "quant": r.quant})
    return {"rows": rows, "outcomes": outcomes, "outcomes_source": OUTCOMES_SOURCE}


def _gpu_memory(gpu: str) -> int:
    from membench.gpu import specs

    return specs.get(gpu).memory_bytes


def measure_speed() -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_profiler import SIZES, measure_overhead, profile_in_fresh_process

    rows = []
    for model, target in SPEED_MODELS.items():
        fig = profile_in_fresh_process(model)
        rows.append({"model": model, "target_wall_s": target["wall_s"], "target_rss_gib": target["rss_gib"],
                     **{k: round(fig[k], 2) for k in ("wall_s", "cpu_s", "import_s", "profile_s", "rss_gib")}})
    return {"rows": rows, "overhead": [measure_overhead(size) for size in sorted(SIZES, reverse=True)]}


# docs/profiling.md: deep models on fake tensors (target CUDA a100-80gb), the whole model and extrapolated
DEPTH = [("llama-2-70b", "lora", 1, 4096), ("llama-2-70b", "full", 1, 2048), ("llama-2-13b", "lora", 8, 512),
         ("llama-2-7b", "lora", 8, 512), ("opt-6.7b", "meft3", 8, 512)]


def measure_depth() -> dict:
    """Each DEPTH run profiled whole (--exact) and extrapolated, in this process (imports paid first): the profile
    times, and whether every figure of the two results is equal."""
    from membench.runner import profile

    profile("llama-2-7b", "lora", batch_size=1, seq_len=64, device="fake", overrides={"num_hidden_layers": 2})
    rows = []
    for model, method, b, s in DEPTH:
        results = {}
        for exact in (True, False):
            r = profile(model, method, batch_size=b, seq_len=s, dtype="bf16", device="fake", exact=exact)
            d = json.loads(r.to_json())
            results[exact] = (r.wall_s, r.provenance["extrapolation"], d)
            d.pop("wall_s")
            for k in ("timestamp", "pid", "extrapolated", "extrapolation"):
                d["provenance"].pop(k, None)
        rows.append({"model": model, "method": method, "batch_size": b, "seq_len": s,
                     "layers": results[True][2]["provenance"]["config"]["num_hidden_layers"],
                     "whole_s": round(results[True][0], 2), "extrapolated_s": round(results[False][0], 2),
                     "extrapolation": results[False][1], "equal": results[True][2] == results[False][2],
                     "max_reserved_bytes": results[False][2]["predicted_cuda"]["max_reserved_bytes"]})
    return {"rows": rows}


MEASURE = {"memory": measure_memory, "methods": measure_methods, "fit": measure_fit, "speed": measure_speed,
           "chunks": measure_chunks, "recipes": measure_recipes, "validation": measure_validation,
           "qlora": measure_qlora, "depth": measure_depth}


# ---- how it is shown ----------------------------------------------------------------------------------------
def _mib(n) -> str:  # whole MiB in the docs' tables
    return mib(n, 0)


def _vs(n, ref) -> str:
    return f"{100 * (n / ref - 1):+.0f}%"


def _gib(n) -> str:
    return f"{n / 2**30:,.2f} GiB"


def _setting(r) -> str:
    return f"{r['dtype']} b{r['batch_size']} s{r['seq_len']}"


def _target(r) -> str:
    return f"CUDA {r['gpu']}" if r["target"] == "cuda" else "CPU kernels"


def render_headline(data: dict) -> str:
    """README: peak activation per method, target cuda, plus the CPU row."""
    lines = ["| model, setting | target | full | LoRA | MEFT1 | MEFT2 | MEFT3 |", "|---|---|---:|---:|---:|---:|---:|"]
    groups: dict[tuple, dict] = {}
    for r in data["rows"]:
        if not r["options"]:
            groups.setdefault((r["model"], _setting(r), _target(r)), {})[r["method"]] = r
    for (model, setting, target), by in groups.items():
        full = by["full"]["peak_activation_bytes"]
        cells = [f"{_mib(full)} MiB"] + [
            f"{_mib(by[m]['peak_activation_bytes'])} ({_vs(by[m]['peak_activation_bytes'], full)})"
            for m in MEMORY_METHODS[1:]]
        lines.append(f"| {model}, {setting} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_meft_memory(data: dict) -> str:
    """docs/meft.md: the whole memory grid."""
    lines = ["| model | method | setting | target | saved (MiB) | peak (MiB) | peak vs full | recomputed (MiB) "
             "| trainable params | max allocated (MiB) |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    fulls = {(r["model"], r["target"]): r["peak_activation_bytes"] for r in data["rows"] if r["method"] == "full"}
    for r in data["rows"]:
        method = r["method"] + (", " + " ".join(f"`-o {k}={v}`" for k, v in r["options"].items())
                                if r["options"] else "")
        full = fulls[(r["model"], r["target"])]
        vs = "0%" if r["method"] == "full" and not r["options"] else _vs(r["peak_activation_bytes"], full)
        lines.append(f"| {r['model']} | {method} | {_setting(r)} | {_target(r)} | {_mib(r['activation_bytes'])} "
                     f"| {_mib(r['peak_activation_bytes'])} | {vs} | {_mib(r['recompute_bytes'])} "
                     f"| {r['num_trainable_params']:,} | {_mib(r['max_allocated_bytes'])} |")
    return "\n".join(lines)


def render_methods(data: dict) -> str:
    """docs/methods.md: every registered method on each setting."""
    out = []
    for st in data["settings"]:
        out.append(f"**{st['model']}**, batch {st['batch_size']}, sequence {st['seq_len']}, {st['dtype']}, "
                   f"target CUDA {data['gpu']} (predicted)")
        out.append("")
        out.append("| method | trainable params | activation MiB | recompute MiB | peak activation MiB | peak in "
                   "| activation vs full | peak vs full | SDPA kernel |")
        out.append("|---|---:|---:|---:|---:|---|---:|---:|---|")
        full = next(r for r in st["rows"] if r["method"] == "full")
        for r in st["rows"]:
            if "error" in r:
                out.append(f"| {r['method']} | error: {r['error']} | | | | | | | |")
                continue
            pct = f"{100 * r['num_trainable_params'] / r['num_params']:.2f}%"
            kernels = ", ".join(f"{k} x{v}" for k, v in sorted((r["sdpa_backends"] or {}).items())) or "-"
            out.append(f"| {r['method']} | {r['num_trainable_params']:,} ({pct}) | {mib(r['activation_bytes'])} "
                       f"| {mib(r['recompute_bytes'])} | {mib(r['peak_activation_bytes'])} | {r['peak_phase']} "
                       f"| {100 * r['activation_bytes'] / full['activation_bytes']:.1f}% "
                       f"| {100 * r['peak_activation_bytes'] / full['peak_activation_bytes']:.1f}% | {kernels} |")
        out.append("")
    return "\n".join(out).rstrip()


def render_fit(data: dict) -> str:
    """README: `membench fit` on a 24 GB card."""
    lines = [f"`membench fit -m {data['model']} --methods {','.join(data['methods'])} --gpu {data['gpu']} "
             f"--dtype {data['dtype']} -s {data['seq_len']}` ({data['wall_s']:.0f} s on "
             f"{data['provenance']['cpu_count']} cores):",
             "", "| method | largest batch | predicted peak there (reserved + context) | next batch over by | searched |",
             "|---|---:|---:|---:|---|"]
    for r in data["rows"]:
        how = r.get("searched", "profiles")
        how = f"{len(r['probes'])} {how}" + (", the answer checked by profiles" if how == "replays" else "")
        lines.append(f"| {r['method']} | {' | '.join(_fit_cells(r))} | {how} |")
    return "\n".join(lines)


def render_depth(data: dict) -> str:
    """docs/profiling.md: a deep model profiled whole and extrapolated from shallow copies."""
    lines = ["| model (bf16, fake tensors, target CUDA a100-80gb) | layers | whole model (--exact) | extrapolated | "
             "every figure equal | max reserved |", "|---|---:|---:|---:|---|---:|"]
    for r in data["rows"]:
        lines.append(f"| {r['model']} {r['method']} b{r['batch_size']} s{r['seq_len']} | {r['layers']} | "
                     f"{r['whole_s']:.1f} s | {r['extrapolated_s']:.1f} s | {'yes' if r['equal'] else 'NO'} | "
                     f"{_gib(r['max_reserved_bytes'])} |")
    return "\n".join(lines)


def _fit_cells(r: dict) -> list[str]:
    """A fit row's largest batch, the predicted peak there (reserved + context), and how far the next is over."""
    peak = (_gib(r["predicted_max_reserved_bytes"] + r["context_bytes"])
            if r["predicted_max_reserved_bytes"] is not None else "-")
    over = f"{_mib(r['over_by_bytes'])} MiB" if r["over_by_bytes"] is not None else "-"
    return [str(r["max_batch_size"]), peak, over]


def render_fit_qlora(data: dict) -> str:
    """README: the QLoRA row of `membench fit` (llama-2-7b on a 24 GB card), beside the bf16 base."""
    f = data["fit"]
    lines = [f"`membench fit -m {f['model']} --methods {f['method']} --gpu {f['gpu']} --dtype {f['dtype']} "
             f"-s {f['seq_len']}`: the bf16 base (also with `{f['method']}+ckpt`), and `--quant nf4 "
             "--quant-double-quant` (where peft's `prepare_model_for_kbit_training` turns gradient checkpointing on):",
             "", "| base | gradient checkpointing | largest batch | predicted peak there (reserved + context) "
             "| next batch over by | fit took |", "|---|---|---:|---:|---:|---:|"]
    for r in f["rows"]:
        lines.append(f"| {r['base']} | {r['checkpointing']} | {' | '.join(_fit_cells(r))} | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def render_qlora(data: dict) -> str:
    """docs/methods.md: llama-2-7b under LoRA, QLoRA and MEFT, bf16 and 4-bit bases (predicted)."""
    st = data["setting"]
    lines = [f"{st['model']}, b{st['batch_size']} s{st['seq_len']}, {st['dtype']} weights, AdamW, target CUDA "
             f"{st['gpu']} (predicted with fake tensors):", "",
             "| setting | quant | weights (+ quant state) | trainable | optimizer state | saved activations "
             "| peak activation | max allocated | max reserved | nvidia-smi |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        lines.append(f"| {r['label']} | {r['quant'] or '-'} | {_gib(r['param_bytes'])} | {r['trainable']:,} "
                     f"| {_mib(r['optimizer_bytes'])} MiB | {_gib(r['activation_bytes'])} "
                     f"| {_gib(r['peak_activation_bytes'])} | {_gib(r['max_allocated_bytes'])} "
                     f"| {_gib(r['max_reserved_bytes'])} | {_gib(r['nvidia_smi_bytes'])} |")
    return "\n".join(lines)


def render_speed(data: dict) -> str:
    """docs/profiling.md: the hooks' cost on a small CPU step; big models under fake tensors, fresh process."""
    lines = ["| small CPU step (opt-125m's architecture, fp32 full, 1 thread, best of interleaved rounds) "
             "| bare step | ledger | ledger + live tracker | target |", "|---|---:|---:|---:|---|"]
    for m in data["overhead"]:
        over, cpu = m["overhead"], m["cpu_s"]
        shape = m["shape"]
        ok = "met" if over["ledger"] < 0.15 else "MISSED"
        lines.append(f"| {shape['layers']} layers x {shape['hidden']}, b{m['batch_size']} s{m['seq_len']} "
                     f"| {cpu['bare'] * 1e3:,.0f} ms CPU | {100 * over['ledger']:+.1f}% | {100 * over['ledger+live']:+.1f}% "
                     f"| ledger < +15%{': ' + ok if m['size'] == 'small' else ' (small model)'} |")
    lines += ["", "| model (b8 s512 bf16 full, fake tensors, target CUDA, fresh process) | wall | CPU | of it imports "
              "| peak RSS | target |", "|---|---:|---:|---:|---:|---|"]
    for r in data["rows"]:
        target = f"< {r['target_wall_s']:.0f} s" + (f", < {r['target_rss_gib']:.0f} GiB RSS"
                                                     if r["target_rss_gib"] else "")
        ok = r["wall_s"] < r["target_wall_s"] and (r["target_rss_gib"] is None or r["rss_gib"] < r["target_rss_gib"])
        lines.append(f"| {r['model']} | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} s | {r['import_s']:.1f} s "
                     f"| {r['rss_gib'] * 1024:,.0f} MiB | {target} {'met' if ok else 'MISSED'} |")
    return "\n".join(lines)


def render_chunks(data: dict) -> str:
    """docs/meft.md: ffn_chunks' peak activation (vs full) and step time (vs k = 1)."""
    full = data["full"]["peak_activation_bytes"]
    ks = sorted({r["k"] for r in data["rows"]})
    lines = [f"{data['model']} {data['dtype']} b{data['batch_size']} s{data['seq_len']}, target CUDA {data['gpu']}; "
             f"full fine-tuning's peak activation {_mib(full)} MiB. Peak activation (MiB, share of full):", "",
             "| method | " + " | ".join(f"ffn_chunks={k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for v in sorted({r["method"] for r in data["rows"]}):
        by = {r["k"]: r["peak_activation_bytes"] for r in data["rows"] if r["method"] == v}
        lines.append(f"| {v} | " + " | ".join(f"{_mib(by[k])} ({by[k] / full:.3f})" for k in ks) + " |")
    lines += ["", "Step time on the CPU (`benchmarks/bench_meft_speed.py`, 4 layers of d 256, 1 thread, best of "
              "interleaved rounds), ratio to ffn_chunks=1:", "",
              "| model | method | " + " | ".join(f"ffn_chunks={k}" for k in ks) + " |", "|---|---|" + "---:|" * len(ks)]
    for sp in data["speed"]:
        for v in ("meft1", "meft3"):
            cells = [f"{sp['ms'][f'{v} k{k}']:,.0f} ms ({sp['ratio'][f'{v} k{k}']:.2f}x)" for k in ks]
            lines.append(f"| {sp['family']} b{sp['batch_size']} s{sp['seq_len']} | {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_recipes(data: dict) -> str:
    """docs/recipes.md: precision x optimizer, predicted for each GPU (fake tensors)."""
    lines = []
    groups: dict[tuple, list] = {}
    for r in data["rows"]:
        groups.setdefault((r["model"], r["method"], r["batch_size"], r["seq_len"], r["gpu"]), []).append(r)
    for (model, method, batch, seq, gpu), rows in groups.items():
        mem = rows[0]["memory_bytes"]
        lines += [f"**{model} {method}, b{batch} s{seq}, on {gpu}** ({_gib(mem)}), predicted:", "",
                  "| precision | weights | optimizer | optimizer state | max allocated | max reserved "
                  "| nvidia-smi | fits |", "|---|---|---|---:|---:|---:|---:|---|"]
        for r in rows:
            smi = _gib(r["nvidia_smi_bytes"]) + (f" (of it paged {_gib(r['paged_bytes'])})" if r["paged_bytes"] else "")
            fits = "yes" if r["nvidia_smi_bytes"] <= mem else f"no (+{_gib(r['nvidia_smi_bytes'] - mem)})"
            lines.append(f"| {r['precision']} | {r['dtype']} | {r['optimizer']} | {_mib(r['optimizer_bytes'])} MiB "
                         f"| {_gib(r['max_allocated_bytes'])} | {_gib(r['max_reserved_bytes'])} | {smi} | {fits} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def render_validation(data: dict) -> str:
    """docs/validation.md: published figure, prediction (nvidia-smi: max reserved + the stated context), error."""
    lines = ["| source | setting | published (nvidia-smi) | predicted nvidia-smi | error | predicted max allocated "
             "/ reserved |", "|---|---|---:|---:|---:|---|"]
    for r in data["rows"]:
        pred = r["nvidia_smi_bytes"] / 2**20
        lines.append(f"| {r['source']} | {r['setting']} | {r['published_mib']:,} MiB | {pred:,.0f} MiB "
                     f"| {100 * (pred / r['published_mib'] - 1):+.1f}% | {_mib(r['max_allocated_bytes'])} / "
                     f"{_mib(r['max_reserved_bytes'])} MiB |")
    return "\n".join(lines)


def render_validation_outcomes(data: dict) -> str:
    """docs/validation.md: published fits / out of memory against the prediction (nvidia-smi vs the GPU's memory)."""
    lines = [f"{data['outcomes_source']}:", "", "| setting | published | predicted nvidia-smi | GPU memory "
             "| predicted | same outcome |", "|---|---|---:|---:|---|---|"]
    for r in data["outcomes"]:
        predicted = "fits" if r["nvidia_smi_bytes"] <= r["memory_bytes"] else "out of memory"
        lines.append(f"| {r['setting']} | {r['published']} | {_gib(r['nvidia_smi_bytes'])} | {_gib(r['memory_bytes'])} "
                     f"| {predicted} | {'yes' if predicted == r['published'] else 'NO'} |")
    return "\n".join(lines)


def _stamp(data: dict) -> str:
    p = data["provenance"]
    return (f"<sub>Written by `python benchmarks/doc_tables.py {data['name']}` on {p['date']}: torch {p['torch']}, "
            f"transformers {p['transformers']}, membench {(p['membench'] or '?')[:12]}.</sub>")


# table name -> (file, measurement, renderer)
TABLES = {
    "headline": ("README.md", "memory", render_headline),
    "fit": ("README.md", "fit", render_fit),
    "meft-memory": ("docs/meft.md", "memory", render_meft_memory),
    "methods": ("docs/methods.md", "methods", render_methods),
    "speed": ("docs/profiling.md", "speed", render_speed),
    "meft-chunks": ("docs/meft.md", "chunks", render_chunks),
    "recipes": ("docs/recipes.md", "recipes", render_recipes),
    "validation": ("docs/validation.md", "validation", render_validation),
    "validation-outcomes": ("docs/validation.md", "validation", render_validation_outcomes),
    "fit-qlora": ("README.md", "qlora", render_fit_qlora),
    "qlora": ("docs/methods.md", "qlora", render_qlora),
    "depth": ("docs/profiling.md", "depth", render_depth),
}
MARK = re.compile(r"(<!-- membench:table (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /membench:table -->)", re.S)


def render(name: str) -> str:
    _file, measurement, fn = TABLES[name]
    data = json.loads((DATA / f"{measurement}.json").read_text())
    return fn(data) + "\n\n" + _stamp(data) + "\n"


def rewrite(text: str, bodies: dict[str, str]) -> str:
    def sub(m):
        name = m.group("name")
        return m.group(1) + bodies[name] + m.group(4) if name in bodies else m.group(0)

    return MARK.sub(sub, text)


def differences() -> list[str]:
    """Tables whose text in their doc is not what the committed JSON renders to (or whose markers are missing)."""
    out = []
    for name, (file, _m, _fn) in TABLES.items():
        text = (ROOT / file).read_text()
        found = {m.group("name"): m.group("body") for m in MARK.finditer(text)}
        if name not in found:
            out.append(f"{file}: no markers for table {name!r}")
        elif found[name] != render(name):
            out.append(f"{file}: table {name!r} differs from what docs/tables/{TABLES[name][1]}.json renders to")
    return out


EXACT_KEYS = ("max_batch_size", "num_params", "num_trainable_params", "sdpa_backends", "seq_len", "error")


def moved_figures(old, new, where: str = "") -> list[str]:
    """Memory figures (`*_bytes`, counts, kernels, batch sizes) that differ; timings are not compared."""
    out = []
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old.keys() | new.keys():
            if key == "provenance":
                continue
            here = f"{where}.{key}" if where else str(key)
            if key.endswith("_bytes") or key in EXACT_KEYS:
                if old.get(key) != new.get(key):
                    out.append(f"{here}: {old.get(key)!r} -> {new.get(key)!r}")
            elif isinstance(old.get(key), dict | list):
                out += moved_figures(old.get(key), new.get(key), here)
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{where}: {len(old)} rows -> {len(new)}"]
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += moved_figures(a, b, f"{where}[{i}]")
    return out


def write_docs(names: list[str]) -> None:
    by_file: dict[str, dict[str, str]] = {}
    for name in names:
        by_file.setdefault(TABLES[name][0], {})[name] = render(name)
    for file, bodies in by_file.items():
        path = ROOT / file
        path.write_text(rewrite(path.read_text(), bodies))
        print(f"wrote {', '.join(bodies)} in {file}", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("measurements", nargs="*", help=f"measure only these ({', '.join(MEASURE)}); default all")
    p.add_argument("--check", action="store_true", help="compare the docs with the committed JSON; exit 1 on a diff")
    p.add_argument("--render", action="store_true", help="rewrite the docs from the committed JSON, measure nothing")
    p.add_argument("--verify", action="store_true", help="re-measure and compare the memory figures with the "
                                                        "committed JSON (exit 1 if any moved); writes nothing")
    args = p.parse_args(argv)
    unknown = [m for m in args.measurements if m not in MEASURE]
    if unknown:
        print(f"error: unknown measurement {unknown[0]!r}; allowed: {', '.join(MEASURE)}", file=sys.stderr)
        return 2
    if args.check:
        diffs = differences()
        for d in diffs:
            print(d)
        return 1 if diffs else 0
    todo = args.measurements or list(MEASURE)
    if args.verify:
        moved = []
        for name in todo:
            print(f"re-measuring {name}", file=sys.stderr)
            old = json.loads((DATA / f"{name}.json").read_text())
            moved += [f"{name}: {m}" for m in moved_figures(old, {"name": name, **MEASURE[name]()})]
        for m in moved:
            print(m)
        print(f"{len(moved)} figure(s) moved" if moved else "every memory figure as committed")
        return 1 if moved else 0
    if not args.render:
        DATA.mkdir(parents=True, exist_ok=True)
        for name in todo:
            print(f"measuring {name}", file=sys.stderr)
            data = {"name": name, "provenance": provenance(), **MEASURE[name]()}
            tmp = DATA / f"{name}.json.tmp"
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            tmp.replace(DATA / f"{name}.json")
    write_docs([t for t, (_f, m, _fn) in TABLES.items() if args.render or m in todo])
    return 0


if __name__ == "__main__":
    sys.exit(main())
