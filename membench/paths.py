"""Output paths, checked before any work starts, and written atomically (no torch).

Every file a command writes (`--out`, `--db`, `--snapshot`, `-o`) is checked first: a path
that cannot be written is a one-line UserError naming it and why, so a long profile or sweep
never ends in a traceback. Missing folders on the way are fine (`--out reports/r.json` in a
fresh checkout): the check probes the nearest folder that exists, and the folders are created
only when the file is written (`make_parents`), so a command refused later leaves nothing behind.
Files are written to a temporary sibling and renamed into place, so an interruption leaves the
old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


def _probe(folder: Path, what: str) -> None:
    """Create and delete a file in `folder`: the only test that sees read-only mounts, permissions and quotas."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".membench-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{what}: cannot write in {folder} ({reason.lower()})") from None


def _nearest_folder(p: Path, what: str) -> Path:
    """The nearest existing ancestor of `p` (the folder new folders would be created in); it must be a folder."""
    existing = p.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is not a folder")
    return existing


def output_file(path: str | os.PathLike, flag: str) -> Path:
    """Check that `path` can be written as a file (it and its folders need not exist); returns it as a Path."""
    p = Path(path)
    what = f"{flag} {p}"
    if p.is_dir():
        raise UserError(f"{what}: is a folder; give a file path")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{what}: the file is not writable")
    _probe(_nearest_folder(p, what), what)
    return p


def output_folder(path: str | os.PathLike, flag: str) -> Path:
    """Check that `path` is a folder that exists and is writable, or can be created; returns it."""
    p = Path(path)
    what = f"{flag} {p}"
    if p.exists() and not p.is_dir():
        raise UserError(f"{what}: is a file; give a folder")
    _probe(p if p.is_dir() else _nearest_folder(p, what), what)
    return p


def make_parents(path: str | os.PathLike) -> Path:
    """Create the missing folders above `path` (checked by `output_file` before any work); returns it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    p = make_parents(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a plain open() would not
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
