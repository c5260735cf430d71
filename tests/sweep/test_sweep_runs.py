"""Sweeps with real run processes (tiny models on the fake backend): OOM/crash/timeout records, SIGKILL + resume.

Each sweep here starts one forkserver (one torch import, a few seconds), so the
grids are small.
"""

from __future__ import annotations

import contextlib
import os
import re
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


def words(text: str) -> str:
    """The text with its line breaks (rich wraps at the terminal's width) as single spaces."""
    return " ".join(text.split())


def _ran(stdout: str) -> int:
    """How many runs a sweep ran itself, from its last line ('4 runs: 0 already stored, ran 2 in ...')."""
    found = re.search(r"ran (\d+) in", words(stdout))
    assert found, stdout[-2000:]
    return int(found.group(1))


def test_two_identical_sweeps_at_once_split_the_runs_and_run_none_twice(tmp_path):
    db = tmp_path / "shared.db"
    # each run sleeps 3 s, so both sweeps are still busy when the later one has started
    cmd = sweep_cmd(db, "--methods", "hangtest", "--batch-sizes", "1,2,3,4", "--option", "hangtest.at=1",
                    "--option", "hangtest.seconds=3", "--name", "twins")
    procs = [subprocess.Popen(cmd, env=env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    ran = [_ran(out) for out, _ in outs]
    assert sum(ran) == 4 and min(ran) >= 1, ran  # the work was split, none of it done twice
    df = results.load(db)
    assert len(df) == 4 and df["key"].is_unique and (df["status"] == "ok").all()
    assert (df["attempts"] == 1).all()  # a run stored twice would count 2 attempts
    assert list(df["run_id"]) == [1, 2, 3, 4] and (df["sweep"] == "twins").all()
    for (out, _err), other in zip(outs, reversed(procs), strict=True):
        line = words(out)
        stored_before = int(re.search(r"(\d+) already stored", line).group(1))  # if it started much later
        n = 4 - _ran(out) - stored_before  # the rest: the other sweep's (named by its pid when seen holding it)
        assert re.search(rf"{n} claimed by another sweep( \(pid {other.pid}\))? and run there", line), line
        assert "failed 0" in line
    assert sqlite3.connect(db).execute("SELECT count(*) FROM claims").fetchone() == (0,)


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
    claims = conn.execute("SELECT pid FROM claims").fetchall()
    conn.close()
    assert claims == [(proc.pid,)]  # the killed sweep still holds batch 2, the run it had in flight
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
    # its owner is dead: the next sweep takes the claim over at once (not after the lease), and says so
    assert f"1 taken over from a stopped sweep (pid {proc.pid})" in words(out.stdout)
    assert sqlite3.connect(db).execute("SELECT count(*) FROM claims").fetchone() == (0,)
    after = results.load(db)
    assert len(after) == 3 and after["key"].is_unique and sorted(after["batch_size"]) == [1, 2, 3]
    assert (after["status"] == "ok").all()
    kept = after.set_index("key").loc[before["key"]]
    assert list(kept["run_id"]) == list(before["run_id"])  # completed runs were not run again
    assert list(kept["created_at"]) == list(before["created_at"])
    assert (kept["device_name"] != "fake executor").all()
    new = after[~after["key"].isin(before["key"])]
    assert len(new) == 3 - len(before) and (new["device_name"] == "fake executor").all()
