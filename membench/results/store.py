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
from ..gpu.predict import stored_columns
from ..result import RunRecord
from .schema import connect, rollback, writing

KINDS = ("memory", "train", "verify")
STATUSES = ("ok", "oom", "failed", "timeout")

# RunResult scalar fields stored as columns of `runs`
RESULT_INT_COLUMNS = (
    "activation_bytes", "peak_activation_bytes", "param_bytes", "trainable_param_bytes", "grad_bytes",
    "optimizer_bytes", "estimated_peak_bytes", "recompute_bytes", "buffer_bytes", "input_bytes",
    "weight_copy_bytes", "num_params", "num_trainable_params",
)
CONFIG_COLUMNS = ("model", "method", "batch_size", "seq_len", "dtype", "device", "attn", "target", "gpu",
                  "optimizer", "precision", "grad_accum", "quant")
_INT_CONFIG = ("batch_size", "seq_len", "grad_accum")
# RunResult.predicted_cuda figures stored as columns (prefixed predicted_): the fields marked `column`
PREDICTED_COLUMNS = stored_columns()


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


def store_result(db_path: str | os.PathLike, record: RunRecord, *, key: str | None = None, sweep: str | None = None,
                 created_at: str | None = None) -> int:
    """Store one run (a `membench.result.RunRecord`) in one transaction; returns its run id.

        store_result("membench.db", RunRecord(result=profile(...)))
        store_result("membench.db", RunRecord(status="oom", error=..., config={"model": ..., ...}))

    A record without a result (status oom / failed / timeout, a verify check) gives its `config` (model,
    method, batch_size, seq_len, dtype, device, ...); one with a result may (default: the result's,
    `config_of`). Its metrics are one column each in `load()`.
    key: identity of the run config (sweeps use it to resume); a stored run with the
        same key is updated in place (same run id, its attempt count goes up, its sweep name
        kept). Without a key the run is appended.
    sweep: the name of the sweep that stored it.  created_at: ISO time (default: now).
    A full disk or a database locked for too long raises `membench.errors.FaultError` (one line);
    nothing of this run is stored then, every run stored before is kept.
    """
    if not isinstance(record, RunRecord):
        raise TypeError(f"store_result takes a membench.result.RunRecord (RunRecord(result=...)), "
                        f"got {type(record).__name__}")
    if record.kind not in KINDS:
        raise UserError(f"unknown run kind {record.kind!r}; allowed: {', '.join(KINDS)}")
    if record.status not in STATUSES:
        raise UserError(f"unknown run status {record.status!r}; allowed: {', '.join(STATUSES)}")
    result = record.result
    if result is None and not record.config:
        raise UserError("store_result: give a RunRecord with a result or a config dict")
    res = result.to_dict() if result is not None else {}
    cfg = dict(record.config) if record.config else config_of(result)
    prov = dict(res.get("provenance") or {})
    prov.update(record.provenance)
    cuda = res.get("cuda") or {}

    row: dict[str, Any] = {"key": key, "kind": record.kind, "status": record.status}
    if not res and cfg.get("quant"):  # a run without a result (failed, out of memory): its setting's label
        from ..quant import label_of

        cfg = {**cfg, "quant": label_of(cfg)}
    for col in CONFIG_COLUMNS:
        val = res.get(col, cfg.get(col)) if res else cfg.get(col)
        row[col] = _int(val) if col in _INT_CONFIG else (None if val in (None, "") else str(val))
    row["config"] = _json(cfg)
    for col in RESULT_INT_COLUMNS:
        row[col] = _int(res.get(col)) if res else None
    row["peak_phase"] = res.get("peak_phase") or None
    row["loss"] = _float(res.get("loss"))
    row["wall_s"] = _float(record.wall_s if record.wall_s is not None else res.get("wall_s"))
    row["cuda_max_allocated_bytes"] = _int(cuda.get("max_allocated_bytes"))
    row["cuda_max_reserved_bytes"] = _int(cuda.get("max_reserved_bytes"))
    predicted = res.get("predicted_cuda") or {}
    for col in PREDICTED_COLUMNS:
        row[f"predicted_{col}"] = _int(predicted.get(col))
    row["error"] = record.error
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
    for name, value in record.metrics.items():
        v = _float(value)
        if v is not None and math.isnan(v):
            v = None
        metric_rows.append((str(name), v))
    layer_rows = [(i, str(layer["name"]), int(layer["activation_bytes"]), int(layer.get("recompute_bytes", 0) or 0))
                  for i, layer in enumerate(res.get("layers") or [])]
    series_rows = _series_rows(record.series)

    with writing(db_path):
        conn = connect(db_path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                run_id = _write_run(conn, row, key, sweep)
                conn.executemany("INSERT INTO layers (run_id, idx, name, activation_bytes, recompute_bytes) "
                                 "VALUES (?, ?, ?, ?, ?)", [(run_id, *r) for r in layer_rows])
                conn.executemany("INSERT OR REPLACE INTO metrics (run_id, name, value) VALUES (?, ?, ?)",
                                 [(run_id, *r) for r in metric_rows])
                conn.executemany("INSERT OR REPLACE INTO series (run_id, name, step, value) VALUES (?, ?, ?, ?)",
                                 [(run_id, *r) for r in series_rows])
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
            return int(run_id)
        finally:
            conn.close()


CHILD_TABLES = ("layers", "metrics", "series")


def _write_run(conn, row: dict[str, Any], key: str | None, sweep: str | None) -> int:
    """Insert the run's row, or update the stored run with the same key in place: its id stays (what
    refers to it by id still does), its attempts go up, and the sweep that stored it first keeps its name."""
    old = conn.execute("SELECT id, attempts, sweep FROM runs WHERE key = ?", (key,)).fetchone() if key else None
    if old is None:
        row["attempts"] = 1
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        return conn.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", tuple(row.values())).lastrowid
    run_id, attempts, first_sweep = old
    row["attempts"] = attempts + 1
    row["sweep"] = first_sweep if first_sweep is not None else sweep
    for table in CHILD_TABLES:  # the new measurement's layers, metrics and series replace the old ones
        conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
    sets = ", ".join(f"{col} = ?" for col in row)
    conn.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*row.values(), run_id))
    return run_id


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
