"""Output paths are checked before any work, one line and exit 2 when unwritable; writes are atomic;
read-only commands never create or change a database."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from membench.backbones.tiny import tiny


@pytest.fixture
def unwritable(tmp_path):
    """A folder nobody may write in: a chmod'ed one (not root), else /sys (root writes through chmod)."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    try:
        tempfile.NamedTemporaryFile(dir="/sys").close()
    except OSError:
        yield Path("/sys")
        return
    pytest.skip("running as root with no read-only folder to write into")


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _run_args(*extra):
    model, ov = tiny("opt", layers=1)
    args = ["run", "-m", model, "-b", "1", "-s", "8"]
    for k, v in ov.items():
        args += ["--override", f"{k}={v}"]
    return [*args, *extra]


def test_run_out_is_checked_before_profiling(cli, tmp_path, unwritable):
    code, _out, err = cli(*_run_args("--out", str(tmp_path)))
    assert code == 2 and "is a folder; give a file path" in _one_line(err)
    (tmp_path / "a-file").write_text("")
    code, _out, err = cli(*_run_args("--out", str(tmp_path / "a-file" / "no" / "r.json")))
    assert code == 2 and "a-file is not a folder" in _one_line(err) and not (tmp_path / "a-file" / "no").exists()
    code, _out, err = cli(*_run_args("--out", str(unwritable / "r.json")))
    assert code == 2 and f"cannot write in {unwritable}" in _one_line(err)
    code, _out, err = cli(*_run_args("--out", str(unwritable / "new" / "r.json")))  # a missing folder's parent
    assert code == 2 and f"cannot write in {unwritable}" in _one_line(err)
    code, _out, err = cli(*_run_args("--db", str(unwritable / "x.db")))
    assert code == 2 and "results database" in _one_line(err)


def test_sweep_report_export_fit_verify_refuse_unwritable_outputs(cli, tmp_path, unwritable):
    for args in (["sweep", "--models", "opt-125m", "--methods", "full", "--seq-lens", "8", "--batch-sizes", "1",
                  "--db", str(unwritable / "s.db")],
                 ["fit", "-m", "opt-125m", "--out", str(unwritable / "f.json")],
                 ["verify", "-m", "bert-base", "--method", "meft1", "--out", str(unwritable / "v.json")]):
        code, _out, err = cli(*args)
        assert code == 2 and "cannot write in" in _one_line(err), args
    db = _small_db(tmp_path)
    code, _out, err = cli("report", "--db", str(db), "-o", str(unwritable / "rep"))
    assert code == 2 and "cannot write in" in _one_line(err)
    code, _out, err = cli("results", "export", "--db", str(db), "--out", str(unwritable / "x.csv"))
    assert code == 2 and "cannot write in" in _one_line(err)


def test_missing_folders_are_created_when_the_file_is_written(cli, tmp_path):
    """The README's `--out reports/r.json` in a fresh folder: the folders appear with the file, and only then
    (a command refused after the check leaves no empty folder)."""
    code, _out, err = cli(*_run_args("--out", str(tmp_path / "reports" / "r.json"),
                                     "--db", str(tmp_path / "dbs" / "a" / "runs.db")))
    assert code == 0, err
    assert (tmp_path / "reports" / "r.json").is_file() and (tmp_path / "dbs" / "a" / "runs.db").is_file()
    code, _out, err = cli("results", "export", "--db", str(tmp_path / "dbs" / "a" / "runs.db"),
                          "--out", str(tmp_path / "exports" / "csv" / "runs.csv"))
    assert code == 0, err
    assert (tmp_path / "exports" / "csv" / "runs.csv").read_text().startswith("run_id,")
    code, _out, err = cli(*_run_args("--method", "qlora", "--out", str(tmp_path / "never" / "r.json")))
    assert code == 2 and "unknown method" in _one_line(err) and not (tmp_path / "never").exists()


def _small_db(tmp_path) -> Path:
    from membench import profile
    from membench.result import RunRecord
    from membench.results import store_result

    model, ov = tiny("opt", layers=1)
    db = tmp_path / "small.db"
    store_result(str(db), RunRecord(result=profile(model, "full", batch_size=1, seq_len=8, device="fake",
                                                   overrides=ov)))
    return db


def test_read_only_commands_never_create_or_change_a_database(cli, tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for args in (["results", "--db", str(empty)], ["report", "--db", str(empty), "-o", str(tmp_path / "r")],
                 ["results", "export", "--db", str(empty), "--out", str(tmp_path / "x.csv")]):
        code, _out, err = cli(*args)
        assert code == 2 and "empty" in _one_line(err), args
        assert empty.stat().st_size == 0
    db = _small_db(tmp_path)
    before = db.read_bytes()
    code, out, err = cli("results", "--db", str(db))
    assert code == 0, err
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("small")) \
        == ["small.db"]  # no -wal / -shm left beside it either
    missing = tmp_path / "missing.db"
    code, _out, err = cli("results", "--db", str(missing))
    assert code == 2 and not missing.exists()


def test_writes_are_atomic(tmp_path, monkeypatch):
    """An interruption while writing leaves the old file whole and no temporary behind."""
    from membench import paths

    target = tmp_path / "r.json"
    target.write_text("old\n")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(paths.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        paths.write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    monkeypatch.undo()
    paths.write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n" and oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
