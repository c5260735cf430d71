"""Read runs back as pandas DataFrames with typed columns (imports no torch)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from ..errors import UserError
from .schema import connect_read_only
from .store import PREDICTED_COLUMNS, RESULT_INT_COLUMNS

PREDICTED = tuple(f"predicted_{c}" for c in PREDICTED_COLUMNS)
INT_COLUMNS = ("run_id", "batch_size", "seq_len", "grad_accum", *RESULT_INT_COLUMNS, "cuda_max_allocated_bytes",
               "cuda_max_reserved_bytes", *PREDICTED, "attempts")
FLOAT_COLUMNS = ("loss", "wall_s")
STRING_COLUMNS = ("key", "kind", "status", "model", "method", "dtype", "device", "attn", "target", "gpu", "optimizer",
                  "precision",
                  "peak_phase", "error",
                  "membench_version", "torch_version", "transformers_version", "device_name", "git_revision",
                  "hostname", "sweep", "config")
# column order of load(): config first, then measurements, then provenance
RUN_COLUMNS = ("run_id", "kind", "status", "model", "method", "batch_size", "seq_len", "dtype", "device", "attn",
               "target", "gpu", "optimizer", "precision", "grad_accum", "quant", *RESULT_INT_COLUMNS, "peak_phase", "loss", "wall_s",
               "cuda_max_allocated_bytes", "cuda_max_reserved_bytes", *PREDICTED, "error", "membench_version", "torch_version", "transformers_version",
               "device_name", "git_revision", "hostname", "sweep", "key", "attempts", "config", "created_at")
OPS = ("==", "!=", ">=", "<=", ">", "<")


def _open(db_path):
    return connect_read_only(db_path)


def _frame(rows, columns):
    import pandas as pd

    return pd.DataFrame.from_records(rows, columns=columns)


def _typed(df):
    import pandas as pd

    for col in df.columns:
        if col in INT_COLUMNS:
            df[col] = pd.to_numeric(df[col]).astype("Int64")
        elif col in FLOAT_COLUMNS:
            df[col] = pd.to_numeric(df[col]).astype("float64")
        elif col in STRING_COLUMNS:
            df[col] = df[col].astype("string")
        elif col == "created_at":
            df[col] = pd.to_datetime(df[col], utc=True, format="ISO8601")
    return df


def _apply_filters(df, filters: dict[str, Any], where: Iterable[tuple[str, str, Any]] = ()):
    import pandas as pd

    mask = pd.Series(True, index=df.index)
    conds = [(k, "==", v) for k, v in filters.items()] + list(where)
    for col, op, value in conds:
        if col not in df.columns:
            raise UserError(f"cannot filter on {col!r}; columns: {', '.join(map(str, df.columns))}")
        s = df[col]
        if isinstance(value, list | tuple | set | frozenset):
            if op not in ("==", "!="):
                raise UserError(f"filter {col}{op}[...]: a list of values needs == or !=")
            m = s.isin([_coerce(s, v) for v in value])
            mask &= m if op == "==" else ~m
            continue
        v = _coerce(s, value)
        if op not in OPS:
            raise UserError(f"bad filter operator {op!r}; allowed: {', '.join(OPS)}")
        m = {"==": s == v, "!=": s != v, ">=": s >= v, "<=": s <= v, ">": s > v, "<": s < v}[op]
        mask &= m.fillna(False).astype(bool)
    return df[mask].reset_index(drop=True)


def _coerce(series, value):
    """A filter value (maybe a CLI string) in the column's type."""
    import pandas as pd

    if not isinstance(value, str):
        return value
    if pd.api.types.is_integer_dtype(series.dtype) or pd.api.types.is_float_dtype(series.dtype):
        try:
            return float(value) if pd.api.types.is_float_dtype(series.dtype) or "." in value else int(value)
        except ValueError:
            raise UserError(f"filter on {series.name!r}: {value!r} is not a number") from None
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return pd.Timestamp(value, tz="UTC") if pd.Timestamp(value).tzinfo is None else pd.Timestamp(value)
    return value


def load(db_path: str | os.PathLike, *, where: Iterable[tuple[str, str, Any]] = (), **filters) -> Any:
    """All runs as a DataFrame, one row per run, typed columns; metrics become columns.

    Filters: `load(db, model="opt-125m", status="ok", method=["lora", "full"])`; comparisons
    with `where=[("batch_size", ">=", 4)]`. Metric columns can be filtered too.
    """
    conn = _open(db_path)
    try:
        cols = [c if c != "run_id" else "id" for c in RUN_COLUMNS]
        rows = conn.execute(f"SELECT {', '.join(cols)} FROM runs ORDER BY id").fetchall()
        metrics = conn.execute("SELECT run_id, name, value FROM metrics").fetchall()
    finally:
        conn.close()
    df = _typed(_frame(rows, list(RUN_COLUMNS)))
    if metrics:
        m = _frame(metrics, ["run_id", "name", "value"]).pivot(index="run_id", columns="name", values="value")
        m.columns = [f"metric_{c}" if c in df.columns else str(c) for c in m.columns]
        m = m.astype("float64").reset_index()
        m["run_id"] = m["run_id"].astype("Int64")
        df = df.merge(m, on="run_id", how="left")
        # metric columns before the provenance block
        metric_cols = [c for c in m.columns if c != "run_id"]
        at = list(df.columns).index("error")
        rest = [c for c in df.columns if c not in metric_cols]
        df = df[rest[:at] + metric_cols + rest[at:]]
    return _apply_filters(df, filters, where) if filters or where else df


def load_layers(db_path: str | os.PathLike, run_ids: Iterable[int] | None = None) -> Any:
    """Per-layer measurements: run_id, layer, idx, activation_bytes, recompute_bytes."""
    conn = _open(db_path)
    try:
        rows = conn.execute("SELECT run_id, name, idx, activation_bytes, recompute_bytes FROM layers "
                            "ORDER BY run_id, idx").fetchall()
    finally:
        conn.close()
    df = _frame(rows, ["run_id", "layer", "idx", "activation_bytes", "recompute_bytes"])
    for col in ("run_id", "idx", "activation_bytes", "recompute_bytes"):
        df[col] = df[col].astype("int64")
    df["layer"] = df["layer"].astype("string")
    if run_ids is not None:
        df = df[df["run_id"].isin(list(run_ids))].reset_index(drop=True)
    return df


def load_series(db_path: str | os.PathLike, run_ids: Iterable[int] | None = None) -> Any:
    """Series (loss curves, accuracy per epoch, ...): run_id, name, step, value."""
    conn = _open(db_path)
    try:
        rows = conn.execute("SELECT run_id, name, step, value FROM series ORDER BY run_id, name, step").fetchall()
    finally:
        conn.close()
    df = _frame(rows, ["run_id", "name", "step", "value"])
    df["run_id"] = df["run_id"].astype("int64")
    df["step"] = df["step"].astype("int64")
    df["name"] = df["name"].astype("string")
    df["value"] = df["value"].astype("float64")
    if run_ids is not None:
        df = df[df["run_id"].isin(list(run_ids))].reset_index(drop=True)
    return df


def load_result(db_path: str | os.PathLike, run_id: int):
    """The full stored `RunResult` of one run (None for runs stored without one)."""
    from ..result import RunResult

    conn = _open(db_path)
    try:
        row = conn.execute("SELECT result FROM runs WHERE id = ?", (int(run_id),)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise UserError(f"no run with id {run_id} in {db_path}")
    return RunResult.from_dict(json.loads(row[0])) if row[0] else None


def run_peak_bytes(row) -> int | None:
    """The run's memory peak: CUDA reserved when measured on a GPU, else predicted for one, else the
    estimated peak of the step."""
    import pandas as pd

    for col in ("cuda_max_reserved_bytes", "predicted_max_reserved_bytes", "estimated_peak_bytes"):
        v = row[col]
        if not pd.isna(v):
            return int(v)
    return None
