"""Drive a sweep: skip what is done, run the rest through an executor, store each run as it ends.

The driver is the only writer of the database: one transaction per finished run,
so a sweep killed at any moment keeps every run it finished. Before it starts a run it
claims it (membench.sweep.claims): sweeps sharing a database split the work, and wait for
the runs another one holds instead of running them twice. Imports no torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import FaultError, PreflightError, UserError
from ..result import RunRecord
from ..results import schema as _schema
from ..results.store import store_result
from .claims import Claims, Outcome, Owner
from .executors import Executor
from .spec import EARLY_STOP_AXES, RunSpec, TrainSpec, axis_group, axis_value

STATUS_ORDER = ("ok", "oom", "failed", "timeout", "skipped")
POLL_S = 0.2  # how long the loop waits for a run to end before it looks at everything else again
HELD_RETRY_S = 1.0  # how often a run another sweep holds is looked at again


@dataclass
class SweepSummary:
    total: int
    already_done: int
    counts: Counter = field(default_factory=Counter)
    run_ids: list[int] = field(default_factory=list)
    records: list[tuple[RunSpec, RunRecord]] = field(default_factory=list)
    wall_s: float = 0.0
    # runs another sweep stored while this one ran: (spec, status, who: "pid 1234", "" if never seen held)
    elsewhere: list[tuple[RunSpec, str, str]] = field(default_factory=list)
    # runs this sweep took over from a sweep that stopped holding them (killed): (spec, who)
    taken_over: list[tuple[RunSpec, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.counts["failed"] + self.counts["timeout"]


def check_db(db: str | os.PathLike) -> None:
    """Refuse a bad or unwritable database before anything runs (writes nothing)."""
    _schema.check_writable(db)


def stored_runs(db: str | os.PathLike, keys: list[str]) -> dict[str, tuple[str, int]]:
    """key -> (status, attempts) of the runs of this sweep already in the database (reads only)."""
    if not Path(db).exists() or _schema.schema_version(db) == 0:
        return {}
    conn = _schema.connect_read_only(db)
    try:
        out = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = conn.execute(f"SELECT key, status, attempts FROM runs WHERE key IN ({marks})", chunk)
            out.update({key: (status, attempts) for key, status, attempts in rows})
        return out
    finally:
        conn.close()


def stored_status(db: str | os.PathLike, keys: list[str]) -> dict[str, str]:
    """key -> status of the runs of this sweep already in the database (reads only)."""
    return {key: status for key, (status, _) in stored_runs(db, keys).items()}


class _EarlyStop:
    """Once a run OOMs, larger runs along `axis` with everything else equal are skipped."""

    def __init__(self, axis: str | None):
        if axis is not None and axis not in EARLY_STOP_AXES:
            raise UserError(f"unknown early-stop axis {axis!r}; allowed: {', '.join(EARLY_STOP_AXES)}")
        self.axis = axis
        self.oom_at: dict[str, int] = {}

    def saw(self, spec: RunSpec, status: str) -> None:
        v = axis_value(spec, self.axis) if self.axis else None
        if v is not None and status == "oom":
            g = axis_group(spec, self.axis)
            self.oom_at[g] = min(v, self.oom_at.get(g, v))

    def next_ready(self, todo: deque, running) -> RunSpec | None:
        """Pop the first pending run that no smaller in-flight run of its group could still stop
        (`running`: this sweep's runs in flight and those another sweep holds)."""
        if not self.axis:
            return todo.popleft()
        busy: dict[str, int] = {}
        for r in running:
            v = axis_value(r, self.axis)
            if v is not None:
                g = axis_group(r, self.axis)
                busy[g] = min(v, busy.get(g, v))
        for i, spec in enumerate(todo):
            g = axis_group(spec, self.axis)
            v = axis_value(spec, self.axis)
            if g not in busy or v is None or v <= busy[g]:
                del todo[i]
                return spec
        return None

    def skips(self, spec: RunSpec) -> int | None:
        """The smaller value that OOMed, if `spec` is to be skipped."""
        v = axis_value(spec, self.axis) if self.axis else None
        if v is None:
            return None
        at = self.oom_at.get(axis_group(spec, self.axis))
        return at if at is not None and v > at else None


def run_sweep(specs: list[RunSpec | TrainSpec], *, db: str | os.PathLike, executor: Executor, timeout: float | None = None,
              rerun: bool = False, early_stop: str | None = None, sweep: str | None = None,
              progress=None) -> SweepSummary:
    """Run `specs` (already validated) and store every finished run in `db`.

    progress: an object with start(total, done), advance(spec, status, counts) and
    finish() (the CLI's rich bar), and optionally note(text), or None.
    The sweep's claims are this module's `Claims` (tests swap it for one with a clock or a pid check).
    A full disk (or a database locked for too long) raises FaultError, one line; what was stored stays.
    """
    t_start = time.monotonic()
    check_db(db)
    keys = {s.key(): s for s in specs}
    if len(keys) != len(specs):
        raise UserError("the sweep has duplicate runs; give each grid value once")
    stopper = _EarlyStop(early_stop)
    stored = stored_runs(db, list(keys))
    done = set() if rerun else {k for k, (st, _) in stored.items() if st in ("ok", "oom")}
    if not rerun:
        for k, (st, _) in stored.items():
            stopper.saw(keys[k], st)
    todo = deque(s for s in specs if s.key() not in done)
    summary = SweepSummary(total=len(specs), already_done=len(specs) - len(todo))
    if not todo:
        summary.wall_s = time.monotonic() - t_start
        return summary

    problems = executor.preflight(list(todo))
    if problems:
        raise PreflightError([(p, None) if isinstance(p, str) else (p["message"], tuple(p["field"] or ()) or None)
                              for p in problems])
    # the first write: creates or migrates the database, after the preflight refused nothing
    held = Claims(db, baseline={k: attempts for k, (_, attempts) in stored.items()}, sweep=sweep)
    driver = _Driver(executor, held, stopper, summary, progress, db=db, timeout=timeout, sweep=sweep)
    if progress is not None:
        progress.start(len(todo), summary.already_done)
    try:
        executor.start(list(todo))
        driver.run(todo)
    except FaultError as exc:
        raise FaultError(f"{exc}; the {len(summary.run_ids)} run(s) this sweep stored before are kept: "
                         "make room and run the same command again to resume") from None
    finally:
        executor.close()
        driver.close()
        if progress is not None:
            progress.finish()
    summary.wall_s = time.monotonic() - t_start
    return summary


class _Driver:
    """The loop of one sweep: start what is ready and unclaimed, wait for what another sweep holds,
    store what ends."""

    def __init__(self, executor: Executor, claims: Claims, stopper: _EarlyStop, summary: SweepSummary, progress, *,
                 db, timeout: float | None, sweep: str | None):
        self.executor, self.claims, self.stopper, self.summary, self.progress = (executor, claims, stopper, summary,
                                                                                 progress)
        self.db, self.timeout, self.sweep = db, timeout, sweep
        self.running: dict[str, RunSpec] = {}
        self.held: dict[str, tuple[RunSpec, Owner | None]] = {}  # key -> (spec, holder): another sweep runs it
        self.holders: dict[str, Owner | None] = {}  # who held a run when this sweep last saw it held
        self.retry_held_at = 0.0
        self.told: set[Owner | None] = set()  # holders the user was told this sweep waits for

    def run(self, todo: deque) -> None:
        self.todo = todo
        while self.todo or self.running or self.held:
            self._keep_claims()
            self._retry_held()
            self._start_ready()
            if self.running:
                for spec, record in self.executor.poll(POLL_S):
                    self._finished(spec, record)
            elif self.todo or self.held:  # nothing of ours in flight: the rest waits for another sweep
                self._tell_waiting()
                time.sleep(POLL_S)

    def close(self) -> None:
        """Release the claims still held (runs stopped unfinished), so the next sweep takes them at once."""
        with contextlib.suppress(FaultError):  # a full disk: they free themselves once this process has exited
            self.claims.close()

    # -- one step of the loop ---------------------------------------------------
    def _start_ready(self) -> None:
        while self.todo and len(self.running) < self.executor.slots:
            elsewhere = [spec for spec, _ in self.held.values()]
            spec = self.stopper.next_ready(self.todo, [*self.running.values(), *elsewhere])
            if spec is None:  # every pending run waits for a smaller one of its group
                return
            at = self.stopper.skips(spec)
            if at is not None:
                self._skipped(spec, at)
                continue
            outcome = self.claims.claim(spec.key())
            if outcome.state == "mine":
                if outcome.owner is not None:
                    self.summary.taken_over.append((spec, self._who(outcome.owner)))
                self.executor.submit(spec, self.timeout)
                self.running[spec.key()] = spec
            elif outcome.state == "done":
                self._done_elsewhere(spec, outcome)
            else:
                self.held[spec.key()] = (spec, outcome.owner)
                self.holders[spec.key()] = outcome.owner

    def _retry_held(self) -> None:
        """Put the runs another sweep holds back in front of the queue, once a second: claimed again,
        they are found stored (done there), still held, or free (their sweep stopped: taken over)."""
        if not self.held or time.monotonic() < self.retry_held_at:
            return
        self.todo.extendleft(reversed([spec for spec, _ in self.held.values()]))
        self.held.clear()
        self.retry_held_at = time.monotonic() + HELD_RETRY_S

    def _keep_claims(self) -> None:
        lost = self.claims.renew_if_due()
        if lost:
            self._note(f"{len(lost)} run(s) in flight were taken over by another sweep after this one stalled "
                       f"for over {self.claims.lease_s:g} s; both will store them")

    def _finished(self, spec: RunSpec, record: RunRecord | Mapping) -> None:
        self.running.pop(spec.key(), None)
        if isinstance(record, Mapping):  # a third-party executor's record, as a dict
            record = RunRecord.from_dict(record)
        status = record.status
        run_id = _store(self.db, spec, record, self.sweep)
        self.claims.release([spec.key()])
        self.summary.run_ids.append(run_id)
        self.summary.counts[status] += 1
        self.summary.records.append((spec, record))
        self.stopper.saw(spec, status)
        self._advance(spec, status)

    def _skipped(self, spec: RunSpec, at: int) -> None:
        self.summary.counts["skipped"] += 1
        self.summary.records.append((spec, RunRecord(status="skipped",
                                                     error=f"{self.stopper.axis} {at} ran out of memory")))
        self._advance(spec, "skipped")

    def _done_elsewhere(self, spec: RunSpec, outcome: Outcome) -> None:
        who = self._who(outcome.owner or self.holders.get(spec.key()))
        self.summary.elsewhere.append((spec, outcome.status or "ok", who))
        self.stopper.saw(spec, outcome.status or "ok")
        self._advance(spec, f"{outcome.status}, run by another sweep" + (f" ({who})" if who else ""))

    # -- telling the user ------------------------------------------------------------
    def _who(self, owner: Owner | None) -> str:
        """'pid 1234' ('pid 1234 on host-b'), or '' when the run was stored before this sweep saw its claim."""
        return owner.describe(self.claims.owner.host) if owner is not None else ""

    def _tell_waiting(self) -> None:
        holders = {owner for _, owner in self.held.values()} - self.told
        for owner in holders:
            n = sum(1 for _, o in self.held.values() if o == owner)
            self._note(f"waiting for {n} run(s) claimed by another sweep ({self._who(owner) or 'unknown'})")
        self.told |= holders

    def _advance(self, spec: RunSpec, status: str) -> None:
        if self.progress is not None:
            self.progress.advance(spec, status, self.summary.counts)

    def _note(self, text: str) -> None:
        note = getattr(self.progress, "note", None)
        if note is not None:
            note(text)


def _store(db, spec: RunSpec | TrainSpec, record: RunRecord, sweep: str | None) -> int:
    """Store a run's record under its spec's key: the spec's config (a training run's: the one it reports,
    else the spec's), and where it ran."""
    prov = {"membench": __version__, "driver_host": socket.gethostname(), **record.provenance}
    if isinstance(spec, TrainSpec):  # accuracy, loss curve and the memory of one profiled step
        kind, config = "train", record.config or spec.store_config()
    else:
        kind, config = "memory", spec.to_dict()
    record = dataclasses.replace(record, kind=kind, config=config, provenance=prov)
    return store_result(db, record, key=spec.key(), sweep=sweep)
