"""Claims: which sweep runs which run, so that sweeps sharing a database never run one run twice.

A claim is a row of the database's `claims` table: the run's key, its owner (host, pid, and a token
for one sweep of that process) and a lease, a time the owner renews while the run is in flight. The
driver claims a run just before it starts it and releases the claim once the run is stored, so a
second sweep of the same grid takes the runs nobody holds and waits for the others.

A claim is free when its lease has run out or, on the claimer's own host, when the owner's process
is gone: a killed sweep's claims are taken over by the next sweep at once (on another host, once
the lease is over). A run stored since a sweep looked at the database (its attempt count went up)
was run by another sweep, and is not claimed again. Imports no torch.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..results import schema

LEASE_S = 300.0  # longer than anything that can stall the driver's loop (a write waits up to BUSY_TIMEOUT_S)
RENEW_EVERY_S = 30.0


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (one of another user counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: one sweep of one process on one host."""

    host: str
    pid: int
    token: str

    @classmethod
    def me(cls) -> Owner:
        return cls(host=socket.gethostname(), pid=os.getpid(), token=secrets.token_hex(8))

    def describe(self, here: str | None = None) -> str:
        """'pid 1234', or 'pid 1234 on host-b' for a sweep on another host than `here`."""
        return f"pid {self.pid}" + ("" if here is None or self.host == here else f" on {self.host}")


@dataclass(frozen=True)
class Outcome:
    """What claiming a run found: "mine" (start it; `owner`: the stopped sweep it was taken over from, if
    one held it), "held" (another sweep runs it now: `owner`) or "done" (another sweep stored it since this
    one looked: `status`, and `owner` when it still held it)."""

    state: str
    owner: Owner | None = None
    status: str | None = None


class Claims:
    """The claims of one sweep (`owner`) in database `db`, with its own connection.

    baseline: {key: attempts} of the runs stored when the sweep looked at the database (absent: none);
    a run whose attempts went past it since was stored by another sweep. clock (unix seconds) and
    pid_alive are injectable for tests."""

    def __init__(self, db: str | os.PathLike, *, baseline: dict[str, int] | None = None, owner: Owner | None = None,
                 sweep: str | None = None, lease_s: float = LEASE_S, renew_every_s: float = RENEW_EVERY_S,
                 clock: Callable[[], float] = time.time, pid_alive: Callable[[int], bool] = pid_alive):
        self.db = db
        self.owner = owner or Owner.me()
        self.sweep = sweep
        self.baseline = dict(baseline or {})
        self.lease_s = lease_s
        self.renew_every_s = renew_every_s
        self.clock = clock
        self.pid_alive = pid_alive
        self.held: set[str] = set()  # keys this sweep holds
        self._renewed_at = clock()
        with schema.writing(db):
            self._conn = schema.connect(db)

    # -- what a claim row means ----------------------------------------------
    def _live(self, host: str, pid: int, lease_until: float) -> bool:
        """A claim of another owner still binds: its lease runs and, on this host, its process lives."""
        if lease_until <= self.clock():
            return False
        return host != self.owner.host or self.pid_alive(pid)

    def _is_me(self, host: str, pid: int, token: str) -> bool:
        return (host, pid, token) == (self.owner.host, self.owner.pid, self.owner.token)

    def _transaction(self, body):
        with schema.writing(self.db):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = body(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                schema.rollback(self._conn)
                raise
        return out

    # -- the interface the driver uses -----------------------------------------
    def claim(self, key: str) -> Outcome:
        """Take the run `key` if nobody else holds it and nobody stored it since the sweep looked."""

        def body(conn: sqlite3.Connection) -> Outcome:
            row = conn.execute("SELECT host, pid, token, lease_until FROM claims WHERE key = ?", (key,)).fetchone()
            holder = Owner(row[0], row[1], row[2]) if row else None
            stored = conn.execute("SELECT status, attempts FROM runs WHERE key = ?", (key,)).fetchone()
            other = holder if row is not None and not self._is_me(*row[:3]) else None
            if stored is not None and stored[1] > self.baseline.get(key, 0):
                return Outcome("done", owner=other, status=stored[0])
            if other is not None and self._live(row[0], row[1], row[3]):
                return Outcome("held", owner=other)
            conn.execute("INSERT OR REPLACE INTO claims (key, host, pid, token, sweep, lease_until, claimed_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (key, self.owner.host, self.owner.pid, self.owner.token, self.sweep,
                          self.clock() + self.lease_s, _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")))
            return Outcome("mine", owner=other)  # other: the stopped sweep it is taken over from

        outcome = self._transaction(body)
        if outcome.state == "mine":
            self.held.add(key)
        return outcome

    def renew(self) -> list[str]:
        """Extend the lease of every claim this sweep holds; returns the keys it lost meanwhile (another
        sweep took them over after the lease ran out: the driver was stalled for longer than a lease)."""
        self._renewed_at = self.clock()
        if not self.held:
            return []
        keys = sorted(self.held)

        def body(conn: sqlite3.Connection) -> list[str]:
            lost = []
            for key in keys:
                cur = conn.execute("UPDATE claims SET lease_until = ? WHERE key = ? AND host = ? AND pid = ? "
                                   "AND token = ?", (self.clock() + self.lease_s, key, self.owner.host,
                                                     self.owner.pid, self.owner.token))
                if cur.rowcount == 0:
                    lost.append(key)
            return lost

        lost = self._transaction(body)
        self.held.difference_update(lost)
        return lost

    def renew_if_due(self) -> list[str]:
        return self.renew() if self.clock() - self._renewed_at >= self.renew_every_s else []

    def release(self, keys: Iterable[str]) -> None:
        """Give up the claims on `keys` (stored, or stopped unfinished: free for the next sweep)."""
        mine = [k for k in keys if k in self.held]
        if not mine:
            return

        def body(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM claims WHERE key = ? AND host = ? AND pid = ? AND token = ?",
                             [(k, self.owner.host, self.owner.pid, self.owner.token) for k in mine])

        self._transaction(body)
        self.held.difference_update(mine)

    def close(self) -> None:
        """Release every claim still held, and close the connection."""
        try:
            self.release(list(self.held))
        finally:
            self._conn.close()
