"""Drive a sweep: skip what is done, run the rest through an executor, store each run as it ends.

The driver is the only writer of the database: one transaction per finished run,
so a sweep killed at any moment keeps every run it finished. Imports no torch.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..errors import PreflightError, UserError
from ..results import schema as _schema
from ..results.store import store_result
from .executors import Executor
from .spec import EARLY_STOP_AXES, RunSpec, TrainSpec, axis_group

STATUS_ORDER = ("ok", "oom", "failed", "timeout", "skipped")


@dataclass
class SweepSummary:
    total: int
    already_done: int
    counts: Counter = field(default_factory=Counter)
    run_ids: list[int] = field(default_factory=list)
    records: list[tuple[RunSpec, dict[str, Any]]] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed(self) -> int:
        return self.counts["failed"] + self.counts["timeout"]


def check_db(db: str | os.PathLike) -> None:
    """Refuse a bad or unwritable database before anything runs (writes nothing)."""
    _schema.check_writable(db)


def stored_status(db: str | os.PathLike, keys: list[str]) -> dict[str, str]:
    """key -> status of the runs of this sweep already in the database."""
    from pathlib import Path

    if not Path(db).exists():
        return {}
    conn = _schema.connect(db)
    try:
        out = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ", ".join("?" for _ in chunk)
            out.update(dict(conn.execute(f"SELECT key, status FROM runs WHERE key IN ({marks})", chunk)))
        return out
    finally:
        conn.close()


class _EarlyStop:
    """Once a run OOMs, larger runs along `axis` with everything else equal are skipped."""

    def __init__(self, axis: str | None):
        if axis is not None and axis not in EARLY_STOP_AXES:
            raise UserError(f"unknown early-stop axis {axis!r}; allowed: {', '.join(EARLY_STOP_AXES)}")
        self.axis = axis
        self.oom_at: dict[str, int] = {}

    def saw(self, spec: RunSpec, status: str) -> None:
        if self.axis and status == "oom":
            g = axis_group(spec, self.axis)
            v = getattr(spec, self.axis)
            self.oom_at[g] = min(v, self.oom_at.get(g, v))

    def next_ready(self, todo: deque, running) -> RunSpec | None:
        """Pop the first pending run that no smaller in-flight run of its group could still stop."""
        if not self.axis:
            return todo.popleft()
        busy = {}
        for r in running:
            g = axis_group(r, self.axis)
            busy[g] = min(getattr(r, self.axis), busy.get(g, getattr(r, self.axis)))
        for i, spec in enumerate(todo):
            g = axis_group(spec, self.axis)
            if g not in busy or getattr(spec, self.axis) <= busy[g]:
                del todo[i]
                return spec
        return None

    def skips(self, spec: RunSpec) -> int | None:
        """The smaller value that OOMed, if `spec` is to be skipped."""
        if not self.axis:
            return None
        at = self.oom_at.get(axis_group(spec, self.axis))
        return at if at is not None and getattr(spec, self.axis) > at else None


def run_sweep(specs: list[RunSpec | TrainSpec], *, db: str | os.PathLike, executor: Executor, timeout: float | None = None,
              rerun: bool = False, early_stop: str | None = None, sweep: str | None = None,
              progress=None) -> SweepSummary:
    """Run `specs` (already validated) and store every finished run in `db`.

    progress: an object with start(total, done), advance(spec, status, counts) and
    finish() (the CLI's rich bar), or None.
    """
    t_start = time.monotonic()
    check_db(db)
    keys = {s.key(): s for s in specs}
    if len(keys) != len(specs):
        raise UserError("the sweep has duplicate runs; give each grid value once")
    stopper = _EarlyStop(early_stop)
    stored = stored_status(db, list(keys))
    done = set() if rerun else {k for k, st in stored.items() if st in ("ok", "oom")}
    for k, st in stored.items():
        if not rerun:
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
    _schema.connect(db).close()  # create or migrate once, before the first run ends
    if progress is not None:
        progress.start(len(todo), summary.already_done)
    running: dict[str, RunSpec] = {}
    try:
        executor.start(list(todo))
        while todo or running:
            while todo and len(running) < executor.slots:
                spec = stopper.next_ready(todo, running.values())
                if spec is None:  # every pending run waits for a smaller one of its group
                    break
                at = stopper.skips(spec)
                if at is not None:
                    summary.counts["skipped"] += 1
                    summary.records.append((spec, {"status": "skipped", "error": f"{early_stop} {at} ran out of memory"}))
                    if progress is not None:
                        progress.advance(spec, "skipped", summary.counts)
                    continue
                executor.submit(spec, timeout)
                running[spec.key()] = spec
            if not running:
                continue
            for spec, record in executor.poll(0.2):
                running.pop(spec.key(), None)
                status = record.get("status", "failed")
                prov = dict(record.get("provenance") or {})
                prov.setdefault("membench", __version__)
                prov.setdefault("driver_host", socket.gethostname())
                if isinstance(spec, TrainSpec):  # accuracy, loss curve and the memory of one profiled step
                    run_id = store_result(db, record.get("result"), kind="train", status=status, key=spec.key(),
                                          config=record.get("config") or spec.store_config(),
                                          metrics=record.get("metrics"), series=record.get("series"),
                                          error=record.get("error"), sweep=sweep, provenance=prov,
                                          wall_s=record.get("wall_s"))
                else:
                    run_id = store_result(db, record.get("result"), status=status, key=spec.key(),
                                          config=spec.to_dict(), error=record.get("error"), sweep=sweep,
                                          provenance=prov, wall_s=record.get("wall_s"))
                summary.run_ids.append(run_id)
                summary.counts[status] += 1
                summary.records.append((spec, record))
                stopper.saw(spec, status)
                if progress is not None:
                    progress.advance(spec, status, summary.counts)
    finally:
        executor.close()
        if progress is not None:
            progress.finish()
    summary.wall_s = time.monotonic() - t_start
    return summary
