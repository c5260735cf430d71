"""Faults of the machine during a sweep: a full disk is one line (exit 1) and keeps every run stored before."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from membench import results
from membench.result import RunRecord
from membench.results import schema

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def fill_the_disk_after(monkeypatch, runs: int) -> None:
    """Once `runs` runs are stored, the database cannot grow: SQLite's own "database or disk is full"
    (SQLITE_FULL, rolling the transaction back itself), as on a full disk."""
    connect = schema._connect

    def full_after(p):
        conn = connect(p)
        stored = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'runs'").fetchone()[0] and \
            conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        if stored >= runs:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn

    monkeypatch.setattr(schema, "_connect", full_after)


def test_a_full_disk_mid_sweep_is_one_line_and_keeps_the_stored_runs(tmp_path, cli, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    db = tmp_path / "full.db"
    fill_the_disk_after(monkeypatch, runs=2)
    code, out, err = cli("sweep", "--models", "opt-125m", "--methods", "full", "--seq-lens", "16", "--batch-sizes",
                         "1,2,3,4,5", "--device", "fake", "--db", str(db), "--executor", "sweep_executor:FakeExecutor",
                         "--no-progress")
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "cannot rollback" not in err, err
    assert lines[0].startswith(f"error: the disk holding {tmp_path} is full (")
    monkeypatch.undo()
    kept = results.load(db)
    n = len(kept)
    assert f"the {n} run(s) this sweep stored before are kept" in lines[0] and 2 <= n < 5
    assert sorted(kept["batch_size"]) == list(range(1, n + 1)) and (kept["status"] == "ok").all()
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_store_result_on_a_full_disk_raises_one_line_not_a_chained_rollback(tmp_path, monkeypatch):
    from membench.errors import FaultError

    db = tmp_path / "r.db"
    cfg = {"model": "opt-125m", "method": "full", "batch_size": 1, "seq_len": 16, "dtype": "fp32", "device": "fake"}
    first = results.store_result(db, RunRecord(status="oom", config=cfg, error="x"), key="a")
    fill_the_disk_after(monkeypatch, runs=1)
    with pytest.raises(FaultError, match=f"the disk holding {tmp_path} is full") as info:
        results.store_result(db, RunRecord(status="oom", config=cfg, error="x" * 100_000), key="b")
    assert info.value.__context__ is None or "rollback" not in str(info.value.__context__)
    monkeypatch.undo()
    assert list(results.load(db)["run_id"]) == [first]
