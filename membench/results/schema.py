"""The results database: one SQLite file, WAL mode, a versioned schema with migrations.

The schema version lives in `PRAGMA user_version`; `PRAGMA application_id` marks
the file as a membench database. Opening a database to write runs the missing
migrations, each in one transaction; reading (`connect_read_only`) never changes
the file (an older schema is migrated in a copy in memory). A file that is not SQLite, a SQLite file of another
application, or a database written by a newer membench is refused with a
`UserError` before anything is written. Imports no torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

from ..errors import FaultError, UserError
from ..gpu.predict import stored_columns
from ..paths import make_parents, output_file
from ..units import format_bytes

APPLICATION_ID = 0x4D454D42  # 'MEMB'
SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 120.0


def _script(conn: sqlite3.Connection, sql: str) -> None:
    """Run DDL statements inside the caller's transaction (executescript would commit it)."""
    for stmt in sql.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _v1(conn: sqlite3.Connection) -> None:
    _script(conn, """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT UNIQUE,
        kind TEXT NOT NULL DEFAULT 'memory',
        status TEXT NOT NULL,
        model TEXT, method TEXT, batch_size INTEGER, seq_len INTEGER, dtype TEXT, device TEXT, attn TEXT,
        config TEXT NOT NULL DEFAULT '{}',
        activation_bytes INTEGER, peak_activation_bytes INTEGER, param_bytes INTEGER,
        trainable_param_bytes INTEGER, grad_bytes INTEGER, optimizer_bytes INTEGER,
        estimated_peak_bytes INTEGER, recompute_bytes INTEGER, buffer_bytes INTEGER, input_bytes INTEGER,
        weight_copy_bytes INTEGER, num_params INTEGER, num_trainable_params INTEGER,
        peak_phase TEXT, loss REAL, wall_s REAL,
        cuda_max_allocated_bytes INTEGER, cuda_max_reserved_bytes INTEGER,
        error TEXT,
        membench_version TEXT, torch_version TEXT, transformers_version TEXT, device_name TEXT,
        git_revision TEXT, hostname TEXT,
        provenance TEXT NOT NULL DEFAULT '{}',
        result TEXT,
        sweep TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX runs_config ON runs (model, method, batch_size, seq_len, dtype, device);
    CREATE TABLE layers (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        activation_bytes INTEGER NOT NULL,
        recompute_bytes INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, idx)
    );
    CREATE TABLE metrics (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value REAL,
        PRIMARY KEY (run_id, name)
    );
    """)


def _v2(conn: sqlite3.Connection) -> None:
    # v2: series (loss curves, accuracy per epoch, per-layer verify errors) and attempt counts.
    _script(conn, """
    CREATE TABLE series (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        step INTEGER NOT NULL,
        value REAL,
        PRIMARY KEY (run_id, name, step)
    );
    ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX runs_status ON runs (status);
    """)


def _add_predicted_columns(conn: sqlite3.Connection, version: int) -> None:
    """The predicted_<name> columns of the PredictedCuda fields that schema `version` added (their metadata)."""
    for name in stored_columns(added_in=version):
        conn.execute(f"ALTER TABLE runs ADD COLUMN predicted_{name} INTEGER")


def _v3(conn: sqlite3.Connection) -> None:
    # v3: what the figures describe (target cpu | cuda, the GPU) and the allocator model's predictions.
    _script(conn, """
    ALTER TABLE runs ADD COLUMN target TEXT;
    ALTER TABLE runs ADD COLUMN gpu TEXT;
    ALTER TABLE runs ADD COLUMN optimizer TEXT
    """)
    _add_predicted_columns(conn, 3)


def _v4(conn: sqlite3.Connection) -> None:
    # v4: claims of runs in flight (membench.sweep.claims): which sweep (host, pid, token) runs which key,
    # until when (lease_until, unix seconds; the owner renews it). Written by sweep drivers only.
    _script(conn, """
    CREATE TABLE claims (
        key TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        token TEXT NOT NULL,
        sweep TEXT,
        lease_until REAL NOT NULL,
        claimed_at TEXT NOT NULL
    )
    """)


def _v5(conn: sqlite3.Connection) -> None:
    # v5: the training recipe: precision (Lightning's names, membench.precision) and gradient accumulation
    _script(conn, """
    ALTER TABLE runs ADD COLUMN precision TEXT;
    ALTER TABLE runs ADD COLUMN grad_accum INTEGER
    """)


def _v6(conn: sqlite3.Connection) -> None:
    # v6: the quantized base (membench.quant: nf4, nf4+dq, int8; NULL: none)
    _script(conn, "ALTER TABLE runs ADD COLUMN quant TEXT")


# MIGRATIONS[i] takes a database from version i to version i + 1. Append, never edit (a new PredictedCuda
# column: its field says column=N, and migration N calls _add_predicted_columns(conn, N)).
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2, _v3, _v4, _v5, _v6]
SCHEMA_VERSION = len(MIGRATIONS)


def check_file(path: str | os.PathLike, *, must_exist: bool, writable: bool = False) -> Path:
    """Refuse a path that cannot be a membench database, without touching it (`writable`: and one that
    cannot be written: SQLite needs its folder too, for the -wal and -shm files)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"results database {p} is a folder; give a file path such as {p / 'membench.db'}")
    if not p.exists():
        if must_exist:
            raise UserError(f"no results database at {p} (run `membench sweep` or `membench run --db {p}` first)")
        if writable:  # (missing folders above it are created when it is: paths.make_parents)
            output_file(p, "results database")
        elif not p.parent.exists():
            raise UserError(f"results database {p}: folder {p.parent} does not exist")
        return p
    try:
        with open(p, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise UserError(f"cannot read results database {p}: {exc.strerror}") from None
    if head and head != SQLITE_MAGIC:
        raise UserError(f"{p} is not a SQLite database; give a new path or a membench results database")
    if writable:
        output_file(p, "results database")
    return p


def _connect(p: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(p), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _inspect(conn: sqlite3.Connection, p: Path) -> int:
    """The schema version of an open database; raise if it is not ours or too new. Writes nothing."""
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{p} is not a readable SQLite database ({exc})") from None
    if app_id not in (0, APPLICATION_ID) or (version == 0 and [t for t in tables if not t.startswith("sqlite_")]):
        raise UserError(f"{p} is a SQLite database of another application (no membench schema); give another path")
    if version > SCHEMA_VERSION:
        raise UserError(f"{p} was written by a newer membench (schema {version}; this one reads up to "
                        f"{SCHEMA_VERSION}); upgrade membench to read it")
    return version


def migrate(conn: sqlite3.Connection, upto: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations, each in its own transaction; returns the new version."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under the write lock
            if version >= upto:
                conn.execute("COMMIT")
                return version
            if version == 0:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already (it does on a full disk: a second
    ROLLBACK would then raise "no transaction is active" over the real error)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def fault(path: str | os.PathLike, exc: sqlite3.Error) -> FaultError | None:
    """The machine's failure behind a SQLite error, as one line (a full disk, a database locked for too
    long, an I/O error, a read-only file); None when the error is not one of those."""
    p = Path(path)
    name = getattr(exc, "sqlite_errorname", None) or ""
    text = str(exc).lower()
    if name == "SQLITE_FULL" or "disk is full" in text:
        folder = p.resolve().parent
        try:
            free = f" ({format_bytes(shutil.disk_usage(folder).free)} free)"
        except OSError:
            free = ""
        return FaultError(f"the disk holding {folder} is full{free}: cannot write results database {p}")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
        return FaultError(f"results database {p} is locked: another process held it for over {BUSY_TIMEOUT_S:g} s")
    if name.startswith("SQLITE_IOERR") or "disk i/o error" in text:
        return FaultError(f"cannot write results database {p}: disk I/O error ({exc})")
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return FaultError(f"cannot write results database {p}: the file or its folder is read-only")
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Writes to the database at `path` inside: a full disk, a lock or an I/O error -> FaultError (one line)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        found = fault(path, exc)
        if found is None:
            raise
        raise found from None


def connect(path: str | os.PathLike, *, create: bool = True, upto: int = SCHEMA_VERSION) -> sqlite3.Connection:
    """Open (and if needed create or migrate) a results database; autocommit mode, WAL."""
    p = make_parents(check_file(path, must_exist=not create, writable=True))
    conn = _connect(p)
    try:
        version = _inspect(conn, p)
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if version < upto:
            migrate(conn, upto)
    except sqlite3.DatabaseError as exc:
        conn.close()
        found = fault(p, exc)
        if found is not None:
            raise found from None
        raise UserError(f"{p} is not a usable SQLite database ({exc})") from None
    except BaseException:
        conn.close()
        raise
    return conn


def check_writable(path: str | os.PathLike) -> Path:
    """Before any work: a database `path` that a command will store runs in must be writable and, if it
    exists, a membench database this version can migrate. Writes nothing."""
    p = check_file(path, must_exist=False, writable=True)
    if p.exists():
        schema_version(p)
    return p


def connect_read_only(path: str | os.PathLike) -> sqlite3.Connection:
    """Open an existing results database for reading; never creates, migrates or changes the file.

    An older schema is migrated in a copy in memory; an empty file is an error."""
    p = check_file(path, must_exist=True)
    src = _open_read_only(p)
    try:
        version = _inspect(src, p)
    except BaseException:
        src.close()
        raise
    if version == 0:
        src.close()
        raise UserError(f"{p} holds no membench results (an empty database); run `membench sweep` or "
                        f"`membench run --db {p}` first")
    if version == SCHEMA_VERSION:
        return src
    mem = sqlite3.connect(":memory:", isolation_level=None)
    try:
        src.backup(mem)
    finally:
        src.close()
    migrate(mem)
    return mem


def _open_read_only(p: Path) -> sqlite3.Connection:
    """A connection that reads `p` and leaves nothing beside it. With no write-ahead log there, nobody is
    writing: read the file as it is (immutable: SQLite creates no -wal/-shm files, which a plain read-only
    open of a WAL database does, and leaves behind); else read through the log, read-only."""
    mode = "mode=ro" if Path(f"{p}-wal").exists() else "immutable=1"
    try:
        return sqlite3.connect(f"file:{quote(str(p.resolve()))}?{mode}", uri=True, timeout=BUSY_TIMEOUT_S,
                               isolation_level=None)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"cannot read results database {p} ({exc})") from None


def schema_version(path: str | os.PathLike) -> int:
    """The schema version of an existing database (0 for an empty file); writes nothing, leaves nothing."""
    p = check_file(path, must_exist=True)
    conn = _open_read_only(p)
    try:
        return _inspect(conn, p)
    finally:
        conn.close()
