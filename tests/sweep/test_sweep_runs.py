"""Sweeps with real run processes (tiny models on the fake backend): OOM/crash/timeout records, SIGKILL + resume.

Each sweep here starts one forkserver (one torch import, a few seconds), so the
grids are small.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from membench import results

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "plugins"


def env(**extra) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
                MEMBENCH_PLUGINS="sweep_methods", HF_HUB_OFFLINE="1", **extra)


def sweep_cmd(db: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "membench", "sweep", "--models", "opt-125m", "--seq-lens", "16", "--tiny",
            "--device", "fake", "--db", str(db), "--no-progress", *args]


def test_injected_oom_recorded_and_sweep_goes_on(tmp_path):
    db = tmp_path / "oom.db"
    cmd = sweep_cmd(db, "--methods", "oomtest,hostoomtest,crashtest,hangtest", "--batch-sizes", "1,2",
                    "--option", "hostoomtest.at=1", "--option", "hangtest.at=2", "--early-stop", "batch_size",
                    "--timeout", "6", "--jobs", "2")
    out = subprocess.run(cmd, env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert out.returncode == 1, out.stderr  # failed / timed-out runs make the exit code 1
    df = results.load(db)
    status = {(r.method, r.batch_size): r.status for r in df.itertuples()}
    assert status == {("oomtest", 1): "ok", ("oomtest", 2): "oom",  # torch.OutOfMemoryError
                      ("hostoomtest", 1): "oom",  # MemoryError; batch 2 skipped by the early stop
                      ("crashtest", 1): "ok", ("crashtest", 2): "failed",
                      ("hangtest", 1): "ok", ("hangtest", 2): "timeout"}
    err = df.set_index(["method", "batch_size"])["error"]
    assert "OutOfMemoryError" in err[("oomtest", 2)] and "MemoryError" in err[("hostoomtest", 1)]
    assert "injected crash at batch >= 2" in err[("crashtest", 2)]
    assert "timed out after 6 s" in err[("hangtest", 2)]
    ok = df[df["status"] == "ok"]
    assert (ok["activation_bytes"] > 0).all() and len(results.load_layers(db, ok["run_id"])) == 4 * len(ok)
    oom = df[df["status"] == "oom"]
    assert oom["activation_bytes"].isna().all() and set(oom["model"]) == {"opt-125m"}
    assert "skipped 1 (early stop)" in out.stdout.replace("\n", "")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_mid_sweep_then_resume(tmp_path):
    db = tmp_path / "kill.db"
    # batch 1 runs; batch 2 hangs in its forward, so the kill lands while it is in flight
    cmd = sweep_cmd(db, "--methods", "hangtest", "--batch-sizes", "1,2,3", "--option", "hangtest.at=2",
                    "--option", "hangtest.seconds=120")
    proc = subprocess.Popen(cmd, env=env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    stored = 0
    descendants: list[int] = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    stored = sqlite3.connect(db, timeout=5).execute("SELECT count(*) FROM runs").fetchone()[0]
                except sqlite3.OperationalError:
                    stored = 0
            if stored >= 1:
                # wait until batch 2 is in flight: a child of the driver's forkserver
                t1 = time.monotonic()
                while time.monotonic() - t1 < 20:
                    descendants = [d for c in _children(proc.pid) for d in (c, *_children(c))]
                    if len(descendants) >= 3:
                        break
                    time.sleep(0.1)
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"sweep ended before it could be killed: {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert descendants, "the sweep's run processes were not found"
    assert stored == 1
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    before = results.load(db)
    assert len(before) == 1 and (before["status"] == "ok").all()
    # the forkserver and the (hanging) run in flight die with the driver: no orphans
    assert len(descendants) >= 3  # resource tracker, forkserver, the run
    t0 = time.monotonic()
    while any(_alive(p) for p in descendants) and time.monotonic() - t0 < 10:
        time.sleep(0.2)
    assert not [p for p in descendants if _alive(p)]

    # resume (with the cheap fake executor: what matters here is which runs the driver starts again)
    fake = [*cmd, "--executor", "sweep_executor:FakeExecutor"]
    out = subprocess.run(fake, env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"{len(before)} already stored" in out.stdout.replace("\n", " ")
    after = results.load(db)
    assert len(after) == 3 and after["key"].is_unique and sorted(after["batch_size"]) == [1, 2, 3]
    assert (after["status"] == "ok").all()
    kept = after.set_index("key").loc[before["key"]]
    assert list(kept["run_id"]) == list(before["run_id"])  # completed runs were not run again
    assert list(kept["created_at"]) == list(before["created_at"])
    assert (kept["device_name"] != "fake executor").all()
    new = after[~after["key"].isin(before["key"])]
    assert len(new) == 3 - len(before) and (new["device_name"] == "fake executor").all()
