"""The results database: runs of `membench run --db` and `membench sweep`, one SQLite file.

    from membench.results import load, load_layers, load_series, store_result
    store_result("membench.db", RunRecord(result=result))  # membench.result.RunRecord: one run to store
    df = load("membench.db", status="ok")          # one row per run, typed columns
    layers = load_layers("membench.db")            # run_id, layer, idx, activation_bytes, recompute_bytes

Imports no torch (reports open fast). See docs/sweep.md.
"""

from __future__ import annotations

from .query import load, load_layers, load_result, load_series
from .schema import SCHEMA_VERSION, connect, schema_version
from .store import KINDS, STATUSES, completed_keys, config_of, store_result

DEFAULT_DB = "membench.db"

__all__ = ["store_result", "load", "load_layers", "load_series", "load_result", "completed_keys", "config_of",
           "connect", "schema_version", "SCHEMA_VERSION", "KINDS", "STATUSES", "DEFAULT_DB"]
