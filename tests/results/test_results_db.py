"""The results database: round trip, typed columns, keyed replace, migration, bad files, concurrent writers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from membench import results
from membench.errors import UserError
from membench.gpu.predict import AllocationTrace, predict, stored_columns
from membench.result import LayerRow, RunRecord, RunResult
from membench.results import schema

REPO = Path(__file__).resolve().parents[2]


def make_result(batch: int = 2, method: str = "lora") -> RunResult:
    return RunResult(
        model="opt-125m", method=method, batch_size=batch, seq_len=16, dtype="bf16", device="fake",
        activation_bytes=1000 * batch, peak_activation_bytes=1700 * batch, param_bytes=5000,
        trainable_param_bytes=300, grad_bytes=300, optimizer_bytes=600,
        layers=[LayerRow("embeddings", 10 * batch), LayerRow("layers.0", 400 * batch, 7),
                LayerRow("layers.1", 590 * batch)],
        provenance={"membench": "0.1.0", "torch": "2.13.0+cpu", "device_name": "fake (test)",
                    "git_revision": "abc", "config": {"hidden_size": 32}},
        recompute_bytes=7, estimated_peak_bytes=9999 + batch, num_params=1250, num_trainable_params=75,
        peak_phase="backward", attn="sdpa", overrides={"num_hidden_layers": 2}, method_options={"r": 8},
        loss=1.25, wall_s=0.5)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_typed_columns(tmp_path):
    db = tmp_path / "r.db"
    res = make_result()
    rid = results.store_result(db, RunRecord(result=res, kind="train", metrics={"accuracy": 0.75, "step_time_s": 0.01},
                                             series={"loss": [(0, 2.0), (10, 1.5)], "accuracy": [0.5, 0.75]}))
    df = results.load(db)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["run_id"] == rid and row["kind"] == "train" and row["status"] == "ok"
    for col in ("model", "method", "batch_size", "seq_len", "dtype", "device", "activation_bytes",
                "peak_activation_bytes", "param_bytes", "trainable_param_bytes", "grad_bytes", "optimizer_bytes",
                "estimated_peak_bytes", "recompute_bytes", "num_params", "peak_phase", "loss"):
        assert row[col] == getattr(res, col), col
    assert row["accuracy"] == 0.75 and row["step_time_s"] == 0.01
    assert row["device_name"] == "fake (test)" and row["torch_version"] == "2.13.0+cpu"
    assert str(df["batch_size"].dtype) == "Int64" and str(df["activation_bytes"].dtype) == "Int64"
    assert str(df["model"].dtype) == "string" and df["accuracy"].dtype == "float64"
    assert isinstance(df["created_at"].dtype, pd.DatetimeTZDtype)

    layers = results.load_layers(db)
    assert list(layers["layer"]) == [r.name for r in res.layers]
    assert list(layers["activation_bytes"]) == [r.activation_bytes for r in res.layers]
    assert list(layers["recompute_bytes"]) == [0, 7, 0]
    assert set(layers["run_id"]) == {rid}

    series = results.load_series(db)
    loss = series[series["name"] == "loss"]
    assert list(zip(loss["step"], loss["value"], strict=True)) == [(0, 2.0), (10, 1.5)]
    acc = series[series["name"] == "accuracy"]
    assert list(acc["step"]) == [0, 1] and list(acc["value"]) == [0.5, 0.75]

    back = results.load_result(db, rid)
    assert back.to_dict() == res.to_dict()


def test_failed_run_without_result_and_keyed_replace(tmp_path):
    db = tmp_path / "r.db"
    cfg = {"model": "opt-1.3b", "method": "full", "batch_size": 64, "seq_len": 2048, "dtype": "bf16",
           "device": "cuda"}
    first = results.store_result(db, RunRecord(status="oom", config=cfg, error="CUDA out of memory"), key="k1")
    df = results.load(db)
    assert df.iloc[0]["status"] == "oom" and df.iloc[0]["batch_size"] == 64
    assert pd.isna(df.iloc[0]["activation_bytes"]) and df.iloc[0]["error"] == "CUDA out of memory"
    assert results.completed_keys(db) == {"k1"}
    assert results.load_result(db, first) is None
    # same key again: replaced in place (not duplicated), attempts counted, old layers gone
    second = results.store_result(db, RunRecord(result=make_result()), key="k1")
    df = results.load(db)
    assert len(df) == 1 and df.iloc[0]["run_id"] == second == first and df.iloc[0]["attempts"] == 2
    assert set(results.load_layers(db)["run_id"]) == {second}
    # no key: appended
    results.store_result(db, RunRecord(result=make_result()))
    results.store_result(db, RunRecord(result=make_result()))
    assert len(results.load(db)) == 3


def test_storing_a_key_again_keeps_its_row_id_and_the_first_sweeps_name(tmp_path):
    db = tmp_path / "r.db"
    cfg = {"model": "opt-125m", "method": "full", "batch_size": 1, "seq_len": 16, "dtype": "fp32", "device": "fake"}
    first = results.store_result(db, RunRecord(status="failed", config=cfg, error="x", metrics={"old": 1.0},
                                               series={"loss": [3.0, 2.0]}), key="k1", sweep="sweep-a")
    other = results.store_result(db, RunRecord(result=make_result(2)), key="k2", sweep="sweep-a")
    again = results.store_result(db, RunRecord(result=make_result(), metrics={"new": 2.0}), key="k1", sweep="sweep-b")
    assert again == first  # what refers to the run by id (reports, exports, another table) still finds it
    df = results.load(db).set_index("key")
    assert list(df["run_id"]) == [first, other] and df.loc["k1", "status"] == "ok" and df.loc["k1", "attempts"] == 2
    assert df.loc["k1", "sweep"] == "sweep-a"  # another sweep storing the run again does not rename it
    assert "old" not in df.columns and df.loc["k1", "new"] == 2.0  # the new measurement's metrics only
    assert results.load_series(db).empty
    assert set(results.load_layers(db)["run_id"]) == {first, other}
    unnamed = results.store_result(db, RunRecord(status="oom", config=cfg, error="x"), key="k3")
    results.store_result(db, RunRecord(status="oom", config=cfg, error="x"), key="k3", sweep="later")
    assert results.load(db).set_index("run_id").loc[unnamed, "sweep"] == "later"  # a name where none was
    with pytest.raises(UserError, match="status"):
        results.store_result(db, RunRecord(result=make_result(), status="weird"))
    with pytest.raises(UserError, match="kind"):
        results.store_result(db, RunRecord(result=make_result(), kind="weird"))
    assert len(results.load(db)) == 3


def test_filters(tmp_path):
    db = tmp_path / "r.db"
    for b in (1, 2, 4, 8):
        results.store_result(db, RunRecord(result=make_result(b, "lora" if b < 4 else "full"),
                                           metrics={"accuracy": b / 10}))
    assert list(results.load(db, method="lora")["batch_size"]) == [1, 2]
    assert list(results.load(db, method=["full"], batch_size=8)["batch_size"]) == [8]
    assert list(results.load(db, where=[("batch_size", ">=", "4")])["batch_size"]) == [4, 8]
    assert list(results.load(db, where=[("accuracy", "<", 0.3)])["batch_size"]) == [1, 2]
    with pytest.raises(UserError, match="cannot filter on 'nope'"):
        results.load(db, nope=1)


def test_migration_from_v1_keeps_rows(tmp_path):
    db = tmp_path / "old.db"
    conn = schema.connect(db, upto=1)  # a database as the first schema wrote it
    conn.execute("INSERT INTO runs (key, status, model, method, batch_size, seq_len, dtype, device, "
                 "activation_bytes, created_at) VALUES ('old', 'ok', 'bert-base', 'full', 4, 128, 'fp32', 'fake', "
                 "123456, '2025-01-02T03:04:05+00:00')")
    conn.execute("INSERT INTO layers VALUES (1, 0, 'layers.0', 123000, 0)")
    conn.close()
    assert schema.schema_version(db) == 1
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "series" not in tables

    df = results.load(db)  # reading migrates a copy in memory: the file is left as it was
    assert schema.schema_version(db) == 1
    schema.connect(db).close()  # opening it to write migrates the file
    assert schema.schema_version(db) == results.SCHEMA_VERSION == 6
    assert len(df) == 1 and df.iloc[0]["activation_bytes"] == 123456 and df.iloc[0]["attempts"] == 1
    assert pd.isna(df.iloc[0]["target"]) and pd.isna(df.iloc[0]["predicted_max_reserved_bytes"])  # v3 columns
    assert pd.isna(df.iloc[0]["precision"]) and pd.isna(df.iloc[0]["grad_accum"])  # v5 columns
    assert df.iloc[0]["created_at"] == pd.Timestamp("2025-01-02T03:04:05", tz="UTC")
    assert list(results.load_layers(db)["activation_bytes"]) == [123000]
    rid = results.store_result(db, RunRecord(result=make_result(), series={"loss": [1.0]}))
    assert len(results.load(db)) == 2 and list(results.load_series(db)["run_id"]) == [rid]
    assert results.completed_keys(db) == {"old"}


def test_target_and_predicted_columns(tmp_path):
    db = tmp_path / "r.db"
    r = make_result()
    r.target, r.gpu, r.optimizer = "cuda", "h100-80gb", "adamw-foreach"
    r.predicted_cuda = dataclasses.replace(predict(AllocationTrace([], [], [])), max_allocated_bytes=1000,
                                           max_reserved_bytes=2048, activation_bytes_paper=700)
    results.store_result(db, RunRecord(result=r))
    results.store_result(db, RunRecord(result=make_result(2)))
    df = results.load(db)
    row = df.iloc[0]
    assert (row["target"], row["gpu"], row["optimizer"]) == ("cuda", "h100-80gb", "adamw-foreach")
    assert (row["predicted_max_allocated_bytes"], row["predicted_max_reserved_bytes"],
            row["predicted_activation_bytes_paper"]) == (1000, 2048, 700)
    assert pd.isna(df.iloc[1]["predicted_max_reserved_bytes"])
    assert list(results.load(db, target="cuda")["batch_size"]) == [r.batch_size]


def test_the_predicted_columns_are_the_record_fields_marked_column(tmp_path):
    """PredictedCuda's fields with column metadata make the predicted_* columns: the same three as ever."""
    db = tmp_path / "r.db"
    results.store_result(db, RunRecord(result=make_result()))
    columns = [row[1] for row in sqlite3.connect(db).execute("PRAGMA table_info(runs)")]
    assert [c for c in columns if c.startswith("predicted_")] == [f"predicted_{c}" for c in stored_columns()] == [
        "predicted_max_allocated_bytes", "predicted_max_reserved_bytes", "predicted_activation_bytes_paper"]


def test_wal_mode_and_integrity(tmp_path):
    db = tmp_path / "r.db"
    results.store_result(db, RunRecord(result=make_result()))
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA application_id").fetchone()[0] == schema.APPLICATION_ID


def test_newer_schema_refused_untouched(tmp_path, cli):
    db = tmp_path / "new.db"
    results.store_result(db, RunRecord(result=make_result()))
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = sha(db)
    with pytest.raises(UserError, match="newer membench"):
        results.load(db)
    with pytest.raises(UserError, match="newer membench"):
        results.store_result(db, RunRecord(result=make_result()))
    code, _out, err = cli("results", "--db", str(db))
    assert code == 2 and "newer membench" in err and len(err.strip().splitlines()) == 1
    assert sha(db) == before


@pytest.mark.parametrize("content", [b"batch_size,activation_bytes\n1,2\n", b"\x00" * 200])
def test_not_sqlite_refused_untouched(tmp_path, cli, content):
    db = tmp_path / "runs.csv"
    db.write_bytes(content)
    with pytest.raises(UserError, match="not a SQLite database"):
        results.store_result(db, RunRecord(result=make_result()))
    for args in (("results", "--db", str(db)), ("results", "export", "--db", str(db), "--out", str(tmp_path / "x.csv")),
                 ("sweep", "--models", "opt-125m", "--methods", "full", "--seq-lens", "16", "--batch-sizes", "1",
                  "--db", str(db))):
        code, _out, err = cli(*args)
        assert code == 2 and "not a SQLite database" in err, args
    assert db.read_bytes() == content
    assert not (tmp_path / "x.csv").exists()


def test_foreign_sqlite_refused(tmp_path):
    db = tmp_path / "other.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    before = sha(db)
    with pytest.raises(UserError, match="another application"):
        results.store_result(db, RunRecord(result=make_result()))
    assert sha(db) == before


def test_missing_db(tmp_path, cli):
    with pytest.raises(UserError, match="no results database"):
        results.load(tmp_path / "nope.db")
    code, _, err = cli("results", "--db", str(tmp_path / "nope.db"))
    assert code == 2 and "no results database" in err
    assert not (tmp_path / "nope.db").exists()


WRITER = textwrap.dedent("""
    import sys
    from membench import results
    from membench.result import LayerRow, RunRecord, RunResult
    db, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = {"model": "opt-125m", "method": tag, "seq_len": 16, "dtype": "fp32", "device": "fake"}
    for i in range(n):
        res = RunResult(**cfg, batch_size=i + 1, activation_bytes=1, peak_activation_bytes=0, param_bytes=0,
                        trainable_param_bytes=0, grad_bytes=0, optimizer_bytes=0, provenance={},
                        layers=[LayerRow(f"layers.{j}", j) for j in range(5)])
        results.store_result(db, RunRecord(result=res, config=dict(cfg, batch_size=i + 1)), key=f"{tag}-{i}")
    print("done")
""")


def test_concurrent_writers_lose_nothing(tmp_path):
    db = tmp_path / "c.db"
    n = 60
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), tag, str(n)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("a", "b", "c")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    df = results.load(db)
    assert len(df) == 3 * n and df["key"].is_unique
    assert sorted(df.groupby("method").size().tolist()) == [n, n, n]
    layers = results.load_layers(db)
    assert len(layers) == 5 * 3 * n and set(layers["run_id"]) == set(df["run_id"])


def test_results_cli_list_and_export(tmp_path, cli):
    db = tmp_path / "r.db"
    for b in (1, 2, 4):
        results.store_result(db, RunRecord(result=make_result(b), metrics={"accuracy": 0.5}))
    code, out, err = cli("results", "--db", str(db), "--filter", "batch_size>=2")
    assert code == 0, err
    assert "2 run(s)" in out and "opt-125m" in out.replace("\n", "")
    ids = [line.split()[1] for line in out.splitlines()  # a folded row continues on lines without an id
           if line.startswith("│") and line.split()[1].isdigit()]
    assert ids and ids == ["2", "3"] * (len(ids) // 2)  # a table too wide for the console: each part names them
    code, out, err = cli("results", "--db", str(db), "--filter", "nonsense")
    assert code == 2 and "bad --filter" in err
    csv = tmp_path / "runs.csv"
    code, out, err = cli("results", "export", "--db", str(db), "--format", "csv", "--out", str(csv), "--layers")
    assert code == 0, err
    back = pd.read_csv(csv)
    assert list(back["batch_size"]) == [1, 2, 4] and list(back["activation_bytes"]) == [1000, 2000, 4000]
    assert len(pd.read_csv(tmp_path / "runs-layers.csv")) == 9
    pytest.importorskip("pyarrow")
    pq = tmp_path / "runs.parquet"
    code, out, err = cli("results", "export", "--db", str(db), "--format", "parquet", "--out", str(pq),
                         "--filter", "method=lora")
    assert code == 0, err
    back = pd.read_parquet(pq)
    assert len(back) == 3 and str(back["activation_bytes"].dtype) == "Int64"
    code, _, err = cli("results", "export", "--db", str(db), "--format", "xlsx")
    assert code == 2 and "allowed: csv, parquet, json" in err


def test_results_package_imports_no_torch():
    code = ("import sys, membench.results, membench.cli.results, membench.sweep, membench.cli.sweep; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_run_db_and_sweeps_mix(tmp_path, cli):
    from membench.backbones.tiny import tiny_overrides
    from membench.sweep import Grid, run_sweep

    from ..plugins.sweep_executor import FakeExecutor

    db = tmp_path / "mix.db"
    overrides = [f"--override={k}={v}" for k, v in tiny_overrides("opt").items()]
    code, out, err = cli("run", "--model", "opt-125m", "--method", "full", "-b", "2", "-s", "16", "--device", "fake",
                         *overrides, "--db", str(db))
    assert code == 0, err
    specs = Grid(models=["opt-125m"], methods=["lora"], seq_lens=[16], batch_sizes=[1, 2], dtypes=["fp32"]).expand()
    run_sweep(specs, db=db, executor=FakeExecutor(), sweep="mixed")
    df = results.load(db)
    assert len(df) == 3
    single = df[df["sweep"].isna()].iloc[0]
    assert single["method"] == "full" and single["batch_size"] == 2 and single["activation_bytes"] > 0
    assert single["device_name"].startswith("fake") and pd.isna(single["key"])
    assert (df[df["sweep"] == "mixed"]["method"] == "lora").all()
    layers = results.load_layers(db, [int(single["run_id"])])
    assert list(layers["layer"]) == ["embeddings", "layers.0", "layers.1", "head"]
    assert layers["activation_bytes"].sum() <= single["activation_bytes"]


def _wal_database(path, user_version: int, application_id: int) -> None:
    """A SQLite file in WAL mode (as membench writes them) that a membench command must refuse."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.execute(f"PRAGMA application_id = {application_id}")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # closed cleanly: no side files


@pytest.mark.parametrize("kind", ["newer", "other-app"])
def test_a_refused_database_is_left_without_side_files(tmp_path, cli, kind):
    db = tmp_path / "x.db"
    _wal_database(db, 99 if kind == "newer" else 0, schema.APPLICATION_ID if kind == "newer" else 0)
    before = db.read_bytes()
    sweep = ["sweep", "--models", "opt-125m", "--methods", "full", "--seq-lens", "16", "--batch-sizes", "1",
             "--device", "fake", "--db", str(db)]
    for args in (["results", "--db", str(db)], ["report", "--db", str(db), "--out", str(tmp_path / "rep")],
                 [*sweep, "--dry-run"], sweep):
        code, _out, err = cli(*args)
        assert code == 2 and ("newer membench" if kind == "newer" else "another application") in err, (args, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"], args  # no -wal, no -shm, no report
        assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_store_result_takes_a_record(tmp_path):
    """One run is one RunRecord: its result, status, error, metrics and series, its own wall time and provenance
    over the result's; a RunResult alone is refused with the way to wrap it."""
    db = tmp_path / "r.db"
    record = RunRecord(result=make_result(), wall_s=9.0, provenance={"driver_host": "h"}, metrics={"accuracy": 0.5},
                       series={"loss": [(0, 1.0)]})
    rid = results.store_result(db, record, key="k", sweep="s")
    row = results.load(db).set_index("run_id").loc[rid]
    assert (row["wall_s"], row["accuracy"], row["key"], row["sweep"], row["device_name"]) == (
        9.0, 0.5, "k", "s", "fake (test)")
    (prov,) = sqlite3.connect(db).execute("SELECT provenance FROM runs WHERE id = ?", (rid,)).fetchone()
    assert json.loads(prov)["driver_host"] == "h"
    with pytest.raises(TypeError, match=r"RunRecord\(result=\.\.\.\)"):
        results.store_result(db, make_result())
    with pytest.raises(UserError, match="a result or a config"):
        results.store_result(db, RunRecord(status="failed"))
    assert len(results.load(db)) == 1
