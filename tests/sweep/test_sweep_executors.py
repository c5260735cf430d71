"""The other executors: spawned `python -m membench.sweep.worker` processes, and Ray (local instance, CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from membench import results
from membench.result import RunRecord, RunResult
from membench.spec import RunSpec
from membench.sweep import Grid, LocalExecutor, run_sweep

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "plugins"


def plugin_env(monkeypatch=None) -> dict[str, str]:
    extra = {"PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
             "MEMBENCH_PLUGINS": "sweep_methods", "HF_HUB_OFFLINE": "1"}
    if monkeypatch is not None:
        for k, v in extra.items():
            monkeypatch.setenv(k, v)
    return dict(os.environ, **extra)


@pytest.mark.slow
def test_spawn_executor_records_ok_and_oom(tmp_path, monkeypatch):
    plugin_env(monkeypatch)
    db = tmp_path / "spawn.db"
    specs = Grid(models=["opt-125m"], methods=["oomtest"], seq_lens=[16], batch_sizes=[1, 2], dtypes=["fp32"],
                 run=RunSpec(device="fake", tiny=True)).expand()
    summary = run_sweep(specs, db=db, executor=LocalExecutor(start_method="spawn"), timeout=300)
    assert summary.counts == {"ok": 1, "oom": 1}
    records = {spec.batch_size: record for spec, record in summary.records}  # from each run's JSON
    assert all(isinstance(r, RunRecord) for r in records.values()) and isinstance(records[1].result, RunResult)
    assert records[2].result is None and "out of memory" in records[2].error.lower()
    df = results.load(db)
    assert dict(zip(df["batch_size"], df["status"], strict=True)) == {1: "ok", 2: "oom"}
    ok = df.set_index("batch_size").loc[1]
    assert ok["activation_bytes"] > 0 and ok["torch_version"]


@pytest.mark.slow
def test_ray_executor_local_instance(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'membench[ray]')")
    db = tmp_path / "ray.db"
    cmd = [sys.executable, "-m", "membench", "sweep", "--models", "opt-125m", "--methods", "oomtest",
           "--seq-lens", "16", "--batch-sizes", "1,2", "--tiny", "--device", "fake", "--db", str(db),
           "--executor", "ray", "--no-progress"]
    out = subprocess.run(cmd, env=plugin_env(), cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    df = results.load(db)
    assert dict(zip(df["batch_size"], df["status"], strict=True)) == {1: "ok", 2: "oom"}
    by_batch = df.set_index("batch_size")
    assert "OutOfMemoryError" in by_batch.loc[2, "error"]
    assert by_batch.loc[1, "activation_bytes"] > 0
    # the driver alone wrote the database; resuming through Ray runs nothing
    again = subprocess.run(cmd, env=plugin_env(), cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 already stored" in again.stdout.replace("\n", " ")
    assert len(results.load(db)) == 2
