"""Claims (membench.sweep.claims): a run one sweep holds is not started by another; a dead owner loses its
claims; a run stored elsewhere is not run again. Unit tests with an injected clock and pid check, then the
driver with the cheap fake executor (two real sweeps at once: tests/sweep/test_sweep_runs.py)."""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from membench import results
from membench.result import RunRecord
from membench.spec import RunSpec
from membench.sweep import Grid, driver, run_sweep
from membench.sweep.claims import Claims, Outcome, Owner

from ..plugins.sweep_executor import FakeExecutor

CFG = {"model": "opt-125m", "method": "full", "batch_size": 1, "seq_len": 16, "dtype": "fp32", "device": "fake"}


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def sweep_of(db, pid: int, *, host: str = "here", alive=lambda pid: True, clock=None, baseline=None) -> Claims:
    return Claims(db, owner=Owner(host, pid, f"token-{pid}"), baseline=baseline, lease_s=60, renew_every_s=10,
                  clock=clock or Clock(), pid_alive=alive)


def test_a_run_one_sweep_claimed_is_held_for_the_others_until_released(tmp_path):
    db = tmp_path / "c.db"
    a, b = sweep_of(db, 1), sweep_of(db, 2)
    assert a.claim("k") == Outcome("mine")
    held = b.claim("k")
    assert held.state == "held" and held.owner == a.owner
    assert a.claim("k") == Outcome("mine")  # its own claim stays its own
    assert b.claim("other") == Outcome("mine")  # a run nobody holds
    a.release(["k"])
    assert b.claim("k") == Outcome("mine")  # released: nobody to take it over from
    assert b.held == {"k", "other"} and a.held == set()


def test_a_dead_owner_on_this_host_loses_its_claims_at_once(tmp_path):
    db = tmp_path / "c.db"
    alive = {1: True, 2: True}
    a = sweep_of(db, 1, alive=lambda pid: alive[pid])
    b = sweep_of(db, 2, alive=lambda pid: alive[pid])
    a.claim("k")
    assert b.claim("k").state == "held"
    alive[1] = False  # killed: its lease has 60 s to run, but its process is gone
    taken = b.claim("k")
    assert taken.state == "mine" and taken.owner == a.owner  # taken over from it
    assert a.renew() == ["k"] and a.held == set()  # had it lived on, it would learn it lost the run


def test_another_hosts_claim_binds_for_its_lease_which_the_owner_renews(tmp_path):
    db = tmp_path / "c.db"
    clock = Clock()
    a = sweep_of(db, 1, host="node-a", clock=clock)
    b = sweep_of(db, 2, host="node-b", clock=clock, alive=lambda pid: False)  # no pid 1 here: only the lease counts
    a.claim("k")
    clock.t += 50
    held = b.claim("k")
    assert held.state == "held" and held.owner.describe("node-b") == "pid 1 on node-a"
    assert a.renew_if_due() == []  # 50 s since the last renewal (every 10 s): renewed until now + 60
    clock.t += 5
    assert a.renew_if_due() == [] and a.held == {"k"}  # not due: the lease still ends 55 s from now
    clock.t += 50
    assert b.claim("k").state == "held"  # 105 s after the claim, 55 s after the renewal
    clock.t += 6  # 61 s after the renewal, which the owner missed: the lease ran out (a stalled or lost owner)
    taken = b.claim("k")
    assert taken.state == "mine" and taken.owner.host == "node-a"
    assert a.renew() == ["k"]


def test_a_run_stored_since_the_sweep_looked_is_done_not_run_again(tmp_path):
    db = tmp_path / "c.db"
    results.store_result(db, RunRecord(status="failed", config=CFG, error="x"), key="k")
    b = sweep_of(db, 2, baseline={"k": 1})  # looked when the failed run was stored: it retries it
    assert b.claim("k") == Outcome("mine")
    b.release(["k"])
    results.store_result(db, RunRecord(status="oom", config=CFG, error="x"), key="k")  # another sweep ran it meanwhile
    assert b.claim("k") == Outcome("done", status="oom")
    late = sweep_of(db, 3, baseline={"k": 2})  # a sweep that looked after that retries it again
    assert late.claim("k") == Outcome("mine")
    early = sweep_of(db, 4)  # one that looked before anything was stored
    done = early.claim("k")
    assert done.state == "done" and done.owner == late.owner


def test_two_sweeps_of_one_process_hold_their_own_claims(tmp_path):
    db = tmp_path / "c.db"
    host = socket.gethostname()
    a = Claims(db, owner=Owner(host, os.getpid(), "first"))
    b = Claims(db, owner=Owner(host, os.getpid(), "second"))  # the real pid check: this process lives
    a.claim("k")
    assert b.claim("k").state == "held"
    a.close()  # releases what it holds
    assert b.claim("k") == Outcome("mine")
    assert sqlite3.connect(db).execute("SELECT token FROM claims").fetchall() == [("second",)]
    b.close()
    assert sqlite3.connect(db).execute("SELECT count(*) FROM claims").fetchone() == (0,)


# ---- the driver ---------------------------------------------------------------------------------------------------


def specs_of(**kw):
    base = dict(models=["opt-125m"], methods=["full"], seq_lens=[16], batch_sizes=[1, 2, 4], dtypes=["fp32"],
                run=RunSpec(device="fake"))
    return Grid(**{**base, **kw}).expand()


class Notes(list):
    """A progress object that keeps the notes it was given."""

    def start(self, total, done):
        pass

    def advance(self, spec, status, counts):
        pass

    def finish(self):
        pass

    def note(self, text):
        self.append(text)


def other_sweep_runs(db, spec, status: str, after_s: float) -> threading.Thread:
    """Another sweep finishing `spec` (claimed in this thread beforehand) `after_s` seconds from now."""
    def finish():
        time.sleep(after_s)
        results.store_result(db, RunRecord(status=status, config=spec.to_dict(), error="elsewhere"), key=spec.key(),
                             sweep="other")
        conn = sqlite3.connect(db)
        conn.execute("DELETE FROM claims WHERE key = ?", (spec.key(),))
        conn.commit()
        conn.close()

    return threading.Thread(target=finish, daemon=True)


def test_the_driver_waits_for_a_run_another_sweep_holds_and_does_not_run_it(tmp_path):
    db = tmp_path / "s.db"
    specs = specs_of()
    other = Claims(db, owner=Owner(socket.gethostname(), os.getpid(), "other-sweep"))
    assert other.claim(specs[1].key()).state == "mine"
    thread = other_sweep_runs(db, specs[1], "ok", after_s=0.5)
    thread.start()
    ex, notes = FakeExecutor(), Notes()
    summary = run_sweep(specs, db=db, executor=ex, sweep="mine", progress=notes)
    thread.join()
    assert ex.submitted == [specs[0], specs[2]]  # not the held one
    assert summary.counts == {"ok": 2} and summary.failed == 0
    assert [(s, st, who) for s, st, who in summary.elsewhere] == [(specs[1], "ok", f"pid {os.getpid()}")]
    assert notes == [f"waiting for 1 run(s) claimed by another sweep (pid {os.getpid()})"]
    df = results.load(db).set_index("key")
    assert len(df) == 3 and (df["attempts"] == 1).all()
    assert df.loc[specs[1].key(), "sweep"] == "other" and df.loc[specs[0].key(), "sweep"] == "mine"
    assert sqlite3.connect(db).execute("SELECT count(*) FROM claims").fetchone() == (0,)  # all released


def test_an_oom_another_sweep_found_stops_the_larger_batches_here(tmp_path):
    db = tmp_path / "s.db"
    specs = specs_of()  # batch 1, 2, 4
    other = Claims(db, owner=Owner(socket.gethostname(), os.getpid(), "other-sweep"))
    other.claim(specs[1].key())
    thread = other_sweep_runs(db, specs[1], "oom", after_s=0.3)
    thread.start()
    ex = FakeExecutor()
    summary = run_sweep(specs, db=db, executor=ex, early_stop="batch_size")
    thread.join()
    # batch 4 waited for the held batch 2 (it could stop it), which ran out of memory there: skipped
    assert ex.submitted == [specs[0]] and summary.counts == {"ok": 1, "skipped": 1}
    assert [st for _, st, _ in summary.elsewhere] == ["oom"]


def test_the_claims_of_a_dead_sweep_are_taken_over(tmp_path):
    db = tmp_path / "s.db"
    specs = specs_of()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    Claims(db, owner=Owner(socket.gethostname(), pid, "killed")).claim(specs[2].key())
    ex = FakeExecutor()
    summary = run_sweep(specs, db=db, executor=ex)
    assert ex.submitted == specs and summary.counts == {"ok": 3}
    assert [(s, who) for s, who in summary.taken_over] == [(specs[2], f"pid {pid}")]
    assert sqlite3.connect(db).execute("SELECT count(*) FROM claims").fetchone() == (0,)


def test_a_sweep_stopped_by_an_error_releases_its_claims(tmp_path, monkeypatch):
    db = tmp_path / "s.db"

    class Breaks(FakeExecutor):
        def poll(self, wait_s=0.1):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(specs_of(), db=db, executor=Breaks())
    assert sqlite3.connect(db).execute("SELECT count(*) FROM claims").fetchone() == (0,)
    ex = FakeExecutor()
    monkeypatch.setattr(driver, "Claims", functools.partial(Claims, pid_alive=lambda pid: True))
    run_sweep(specs_of(), db=db, executor=ex)
    assert len(ex.submitted) == 3  # nothing left held by the stopped sweep (this process still lives)
