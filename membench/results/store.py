"""Write runs: one transaction per run (the run row, its layers, metrics and series)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import UserError
from .schema import connect

KINDS = ("memory", "train", "verify")
STATUSES = ("ok", "oom", "failed", "timeout")

# RunResult scalar fields stored as columns of `runs`
RESULT_INT_COLUMNS = (
    "activation_bytes", "peak_activation_bytes", "param_bytes", "trainable_param_bytes", "grad_bytes",
    "optimizer_bytes", "estimated_peak_bytes", "recompute_bytes", "buffer_bytes", "input_bytes",
    "weight_copy_bytes", "num_params", "num_trainable_params",
)
CONFIG_COLUMNS = ("model", "method", "batch_size", "seq_len", "dtype", "device", "attn", "target", "gpu",
                  "optimizer")
# RunResult.predicted_cuda keys stored as columns (prefixed predicted_)
PREDICTED_COLUMNS = ("max_allocated_bytes", "max_reserved_bytes", "activation_bytes_paper")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v


def config_of(result) -> dict[str, Any]:
    """The run config a RunResult was measured with (what identifies it)."""
    prov = result.provenance or {}
    cfg = {k: getattr(result, k) for k in CONFIG_COLUMNS}
    cfg.update(overrides=dict(result.overrides or {}), method_options=dict(result.method_options or {}))
    if prov.get("pretrained"):
        cfg["pretrained"] = prov["pretrained"]
    return cfg


def _result_dict(result) -> dict[str, Any]:
    if result is None:
        return {}
    if isinstance(result, Mapping):
        return dict(result)
    if hasattr(result, "to_dict"):
        return result.to_dict()
    raise TypeError(f"store_result: expected a RunResult, a dict or None, got {type(result).__name__}")


def _series_rows(series: Mapping[str, Iterable] | None) -> list[tuple[str, int, float | None]]:
    rows = []
    for name, points in (series or {}).items():
        for i, point in enumerate(points):
            if isinstance(point, Mapping):
                step, value = point.get("step", i), point.get("value")
            elif isinstance(point, list | tuple) and len(point) == 2:
                step, value = point
            else:  # a bare list of values: steps 0, 1, 2, ...
                step, value = i, point
            rows.append((str(name), int(step), _float(value)))
    return rows


def store_result(db_path: str | os.PathLike, result=None, *, kind: str = "memory", status: str = "ok",
                 metrics: Mapping[str, Any] | None = None, series: Mapping[str, Iterable] | None = None,
                 key: str | None = None, error: str | None = None, config: Mapping[str, Any] | None = None,
                 sweep: str | None = None, provenance: Mapping[str, Any] | None = None,
                 created_at: str | None = None, wall_s: float | None = None) -> int:
    """Store one run in one transaction; returns its run id.

    result: a `membench.result.RunResult` (or its dict), or None for a run that
        produced none (status oom / failed / timeout, or a train run): then give
        `config` (model, method, batch_size, seq_len, dtype, device, ...).
    kind: "memory" | "train" | "verify".  status: "ok" | "oom" | "failed" | "timeout".
    metrics: extra scalars (accuracy, step_time_s, ...), one column each in `load()`.
    series: name -> [(step, value), ...] (loss curve, accuracy per epoch, ...).
    wall_s: seconds the run took (default: the result's own wall_s).
    key: identity of the run config (sweeps use it to resume); a stored run with the
        same key is replaced (its attempt count goes up). Without a key the run is appended.
    """
    if kind not in KINDS:
        raise UserError(f"unknown run kind {kind!r}; allowed: {', '.join(KINDS)}")
    if status not in STATUSES:
        raise UserError(f"unknown run status {status!r}; allowed: {', '.join(STATUSES)}")
    res = _result_dict(result)
    if not res and not config:
        raise UserError("store_result: give a RunResult or a config dict")
    cfg = dict(config) if config else (config_of(result) if hasattr(result, "provenance") else
                                       {k: res.get(k) for k in CONFIG_COLUMNS} |
                                       {"overrides": res.get("overrides", {}),
                                        "method_options": res.get("method_options", {})})
    prov = dict(res.get("provenance") or {})
    prov.update(provenance or {})
    cuda = res.get("cuda") or {}

    row: dict[str, Any] = {"key": key, "kind": kind, "status": status}
    for col in CONFIG_COLUMNS:
        val = res.get(col, cfg.get(col)) if res else cfg.get(col)
        row[col] = _int(val) if col in ("batch_size", "seq_len") else (None if val is None else str(val))
    row["config"] = _json(cfg)
    for col in RESULT_INT_COLUMNS:
        row[col] = _int(res.get(col)) if res else None
    row["peak_phase"] = res.get("peak_phase") or None
    row["loss"] = _float(res.get("loss"))
    row["wall_s"] = _float(wall_s) if wall_s is not None else _float(res.get("wall_s"))
    row["cuda_max_allocated_bytes"] = _int(cuda.get("max_allocated_bytes"))
    row["cuda_max_reserved_bytes"] = _int(cuda.get("max_reserved_bytes"))
    predicted = res.get("predicted_cuda") or {}
    for col in PREDICTED_COLUMNS:
        row[f"predicted_{col}"] = _int(predicted.get(col))
    row["error"] = error
    row["membench_version"] = prov.get("membench") or _membench_version()
    row["torch_version"] = prov.get("torch")
    row["transformers_version"] = prov.get("transformers")
    row["device_name"] = prov.get("device_name")
    row["git_revision"] = prov.get("git_revision")
    row["hostname"] = prov.get("hostname") or socket.gethostname()
    row["provenance"] = _json(prov)
    row["result"] = _json(res) if res else None
    row["sweep"] = sweep
    row["created_at"] = created_at or _now()

    metric_rows = []
    for name, value in (metrics or {}).items():
        v = _float(value)
        if v is not None and math.isnan(v):
            v = None
        metric_rows.append((str(name), v))
    layer_rows = [(i, str(layer["name"]), int(layer["activation_bytes"]), int(layer.get("recompute_bytes", 0) or 0))
                  for i, layer in enumerate(res.get("layers") or [])]
    series_rows = _series_rows(series)

    conn = connect(db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            attempts = 1
            if key is not None:
                old = conn.execute("SELECT id, attempts FROM runs WHERE key = ?", (key,)).fetchone()
                if old is not None:
                    attempts = old[1] + 1
                    conn.execute("DELETE FROM runs WHERE id = ?", (old[0],))  # cascades to its layers etc.
            row["attempts"] = attempts
            cols = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            run_id = conn.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", tuple(row.values())).lastrowid
            conn.executemany("INSERT INTO layers (run_id, idx, name, activation_bytes, recompute_bytes) "
                             "VALUES (?, ?, ?, ?, ?)", [(run_id, *r) for r in layer_rows])
            conn.executemany("INSERT OR REPLACE INTO metrics (run_id, name, value) VALUES (?, ?, ?)",
                             [(run_id, *r) for r in metric_rows])
            conn.executemany("INSERT OR REPLACE INTO series (run_id, name, step, value) VALUES (?, ?, ?, ?)",
                             [(run_id, *r) for r in series_rows])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(run_id)
    finally:
        conn.close()


def _membench_version() -> str | None:
    from .. import __version__

    return __version__


def completed_keys(db_path: str | os.PathLike, statuses: Iterable[str] = ("ok", "oom")) -> set[str]:
    """Keys of stored runs whose status is final (a sweep resumes by skipping these)."""
    from pathlib import Path

    if not Path(db_path).exists():
        return set()
    conn = connect(db_path)
    try:
        sts = tuple(statuses)
        marks = ", ".join("?" for _ in sts)
        rows = conn.execute(f"SELECT key FROM runs WHERE key IS NOT NULL AND status IN ({marks})", sts)
        return {r[0] for r in rows}
    finally:
        conn.close()
