"""Sweep logic without run processes: grid expansion, keys, TOML files, resume, early stop, bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from membench import results
from membench.errors import UserError
from membench.result import RunRecord
from membench.sweep import Grid, RunSpec, load_experiment, run_sweep
from membench.sweep.spec import axis_group

from ..plugins.sweep_executor import FakeExecutor

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "plugins"


RUN_OPTIONS = {f.name for f in dataclasses.fields(RunSpec)}


def grid(**kw) -> Grid:
    """A grid; run options (device, target, ...) given by name go to every run (Grid.run)."""
    run = {"device": "fake", **{k: kw.pop(k) for k in list(kw) if k in RUN_OPTIONS and k != "method_options"}}
    base = dict(models=["opt-125m", "gpt2"], methods=["full", "lora"], seq_lens=[128, 256],
                batch_sizes=[16, 1, 4], dtypes=["bf16"])
    base.update(kw)
    return Grid(**base, run=RunSpec(**run))


def test_grid_expands_every_combination_batch_innermost():
    g = grid()
    specs = g.expand()
    assert len(specs) == g.size == 2 * 2 * 2 * 3 * 1
    combos = {(s.model, s.method, s.seq_len, s.batch_size, s.dtype) for s in specs}
    assert len(combos) == len(specs)
    assert {c[0] for c in combos} == {"opt-125m", "gpt2"} and {c[3] for c in combos} == {1, 4, 16}
    # batch size is the innermost axis, ascending
    for i in range(0, len(specs), 3):
        chunk = specs[i:i + 3]
        assert [s.batch_size for s in chunk] == [1, 4, 16]
        assert len({axis_group(s, "batch_size") for s in chunk}) == 1
    assert all(s.device == "fake" and s.dtype == "bf16" for s in specs)
    assert len({s.key() for s in specs}) == len(specs)


def test_dtype_aliases_and_options_per_method():
    specs = grid(dtypes=["bfloat16", "fp32"], method_options={"lora": {"r": 16}}).expand()
    assert {s.dtype for s in specs} == {"bf16", "fp32"}
    assert all(s.method_options == ({"r": 16} if s.method == "lora" else {}) for s in specs)


def test_key_is_stable_and_covers_everything():
    a = RunSpec("opt-125m", "lora", 4, 128, "bf16", "fake", overrides={"a": 1, "b": 2})
    b = RunSpec("opt-125m", "lora", 4, 128, "bf16", "fake", overrides={"b": 2, "a": 1})
    assert a.key() == b.key()
    # a fixed input gives a fixed key across processes and sessions
    out = subprocess.run([sys.executable, "-c", "from membench.sweep import RunSpec; "
                          "print(RunSpec('opt-125m','lora',4,128,'bf16','fake',overrides={'a':1,'b':2}).key())"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == a.key()
    assert a.key("0.1.0") != a.key("0.2.0")
    variants = [RunSpec("opt-125m", "lora", 8, 128, "bf16", "fake"), RunSpec("opt-125m", "lora", 4, 256, "bf16", "fake"),
                RunSpec("opt-125m", "lora", 4, 128, "fp32", "fake"), RunSpec("opt-125m", "lora", 4, 128, "bf16", "cpu"),
                RunSpec("opt-125m", "full", 4, 128, "bf16", "fake"), RunSpec("gpt2", "lora", 4, 128, "bf16", "fake"),
                RunSpec("opt-125m", "lora", 4, 128, "bf16", "fake", method_options={"r": 4}),
                RunSpec("opt-125m", "lora", 4, 128, "bf16", "fake", attn="eager"),
                RunSpec("opt-125m", "lora", 4, 128, "bf16", "fake", seed=1),
                RunSpec("opt-125m", "lora", 4, 128, "bf16", "fake", tiny=True)]
    keys = {v.key() for v in variants} | {RunSpec("opt-125m", "lora", 4, 128, "bf16", "fake").key()}
    assert len(keys) == len(variants) + 1


@pytest.mark.parametrize("kw, match", [
    ({"models": []}, "--models: empty grid"),
    ({"batch_sizes": []}, "--batch-sizes: empty grid"),
    ({"batch_sizes": [1, 4, 1]}, "--batch-sizes: duplicate value 1"),
    ({"methods": ["lora", "lora"]}, "duplicate value 'lora'"),
    ({"dtypes": ["bf16", "bfloat16"]}, "duplicate dtype"),
    ({"seq_lens": [0]}, "not a positive integer"),
    ({"dtypes": ["fp8"]}, "unknown dtype"),
    ({"device": "tpu"}, "unknown device"),
    ({"method_options": {"ia3": {"x": 1}}}, "not in the grid's methods"),
])
def test_bad_grids(kw, match):
    with pytest.raises(UserError, match=match):
        grid(**kw).expand()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("args, match", [
    (["--models", "opt-125m", "--methods", "full", "--seq-lens", "16", "--batch-sizes", "0"], "--batch-sizes: 0 is not"),
    (["--models", "opt-125m", "--methods", "full", "--seq-lens", "16", "--batch-sizes", "1,2,1"], "duplicate value 1"),
    (["--models", "opt-125m", "--methods", "full", "--seq-lens", "16,x", "--batch-sizes", "1"], "not an integer"),
    (["--models", "opt-9000", "--methods", "full", "--seq-lens", "16", "--batch-sizes", "1"], "unknown model"),
    (["--models", "opt-125m", "--methods", "full", "--seq-lens", "16", "--batch-sizes", "1", "--timeout", "0"],
     "--timeout"),
    (["--models", "opt-125m", "--methods", "full", "--seq-lens", "16", "--batch-sizes", "1", "--executor", "slurm"],
     "unknown executor"),
])
def test_bad_cli_input_exit_2_db_untouched(tmp_path, cli, args, match):
    db = tmp_path / "keep.db"
    results.store_result(db, RunRecord(status="oom", config={"model": "x"}), key="precious")
    before = sha(db)
    code, _out, err = cli("sweep", *args, "--db", str(db), "--device", "fake")
    assert code == 2, err
    assert match in err and len(err.strip().splitlines()) == 1
    assert sha(db) == before


# ---- experiment files ----------------------------------------------------------------------------

GOOD = """\
# a committed experiment
name = "fits"
models = ["opt-125m"]
methods = ["full", "lora"]
seq_lens = [16, 32]
batch_sizes = [1, 2]
dtypes = ["fp32"]
device = "fake"
tiny = true
early_stop = "batch_size"
timeout = 60

[overrides]
num_hidden_layers = 1

[options.lora]
r = 4
"""


def test_experiment_file_parsed(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text(GOOD)
    cfg = load_experiment(f)
    assert cfg["models"] == ["opt-125m"] and cfg["batch_sizes"] == [1, 2] and cfg["tiny"] is True
    assert cfg["overrides"] == {"num_hidden_layers": 1} and cfg["method_options"] == {"lora": {"r": 4}}


@pytest.mark.parametrize("text, match", [
    (GOOD.replace("batch_sizes = [1, 2]", "batch_size = [1, 2]"), r"exp.toml:6: key 'batch_size': unknown key"),
    (GOOD.replace("seq_lens = [16, 32]", 'seq_lens = [16, "32"]'), r"exp.toml:5: key 'seq_lens': expected a list"),
    (GOOD.replace('device = "fake"', "device = 3"), r"exp.toml:8: key 'device': expected a string"),
    (GOOD.replace("tiny = true", "tiny = yes"), r"exp.toml: not valid TOML: .*line 9"),
    (GOOD + "\n[bogus]\nx = 1\n", r"exp.toml:19: key 'bogus': unknown key"),
])
def test_bad_experiment_file(tmp_path, cli, text, match):
    f = tmp_path / "exp.toml"
    f.write_text(text)
    with pytest.raises(UserError, match=match):
        load_experiment(f)
    code, _out, err = cli("sweep", "--config", str(f), "--db", str(tmp_path / "x.db"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()


def test_cli_flags_override_file(tmp_path, cli):
    f = tmp_path / "exp.toml"
    f.write_text(GOOD)
    code, out, err = cli("sweep", "--config", str(f), "--batch-sizes", "8", "--methods", "lora", "--dry-run",
                         "--db", str(tmp_path / "x.db"))
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 2  # 1 model x 1 method x 2 seq x 1 batch
    assert all(" lora " in r and " 8 " in r for r in rows)
    assert not (tmp_path / "x.db").exists()


# ---- resume and early stop through run_sweep, with a cheap fake executor ---------------------------


def test_resume_skips_done_and_rerun_forces(tmp_path):
    db = tmp_path / "r.db"
    specs = grid(batch_sizes=[1, 2]).expand()
    ex = FakeExecutor()
    s1 = run_sweep(specs, db=db, executor=ex)
    assert s1.counts["ok"] == len(specs) == len(ex.submitted)
    ex2 = FakeExecutor()
    s2 = run_sweep(specs, db=db, executor=ex2)
    assert s2.already_done == len(specs) and ex2.submitted == []
    # a bigger grid runs only what is new
    bigger = grid(batch_sizes=[1, 2, 4]).expand()
    ex3 = FakeExecutor()
    run_sweep(bigger, db=db, executor=ex3)
    assert sorted({s.batch_size for s in ex3.submitted}) == [4] and len(ex3.submitted) == len(bigger) - len(specs)
    df = results.load(db)
    assert len(df) == len(bigger) and df["key"].is_unique
    ex4 = FakeExecutor()
    run_sweep(specs, db=db, executor=ex4, rerun=True)
    assert len(ex4.submitted) == len(specs)
    df = results.load(db)
    assert len(df) == len(bigger) and df["key"].is_unique
    assert sorted(df["attempts"].tolist()) == [1] * (len(bigger) - len(specs)) + [2] * len(specs)


def test_failed_runs_are_retried_on_resume(tmp_path):
    db = tmp_path / "r.db"
    specs = grid(models=["opt-125m"], methods=["full"], seq_lens=[16], batch_sizes=[1, 2]).expand()
    results.store_result(db, RunRecord(status="failed", config=specs[0].to_dict(), error="x"), key=specs[0].key())
    results.store_result(db, RunRecord(status="oom", config=specs[1].to_dict(), error="x"), key=specs[1].key())
    ex = FakeExecutor()
    run_sweep(specs, db=db, executor=ex)
    assert ex.submitted == [specs[0]]
    assert results.load(db).set_index("key").loc[specs[0].key(), "status"] == "ok"


def test_early_stop_along_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBENCH_FAKE_OOM_TOKENS", str(4 * 128))  # b>=4 OOMs at s128, b>=2 at s256
    db = tmp_path / "r.db"
    specs = grid(models=["opt-125m"], methods=["full"], batch_sizes=[1, 2, 4, 8, 16]).expand()
    ex = FakeExecutor()
    s = run_sweep(specs, db=db, executor=ex, early_stop="batch_size")
    ran = {(x.seq_len, x.batch_size) for x in ex.submitted}
    assert ran == {(128, 1), (128, 2), (128, 4), (256, 1), (256, 2)}
    assert s.counts == {"ok": 3, "oom": 2, "skipped": 5}
    df = results.load(db)
    assert len(df) == 5 and sorted(df[df["status"] == "oom"]["batch_size"].tolist()) == [2, 4]
    # with runs in parallel, a run waits while a smaller one of its group is in flight: same outcome
    par = FakeExecutor(jobs=4)
    sp = run_sweep(specs, db=tmp_path / "par.db", executor=par, early_stop="batch_size")
    assert {(x.seq_len, x.batch_size) for x in par.submitted} == ran and sp.counts == s.counts
    # resume: the stored OOMs still stop the larger batches; nothing runs
    ex2 = FakeExecutor()
    s2 = run_sweep(specs, db=db, executor=ex2, early_stop="batch_size")
    assert ex2.submitted == [] and s2.counts["skipped"] == 5
    # without early stop they run (and OOM)
    ex3 = FakeExecutor()
    run_sweep(specs, db=db, executor=ex3)
    assert {(x.seq_len, x.batch_size) for x in ex3.submitted} == {(128, 8), (128, 16), (256, 4), (256, 8), (256, 16)}


def _sweep_cmd(db: Path, batches: str) -> list[str]:
    return [sys.executable, "-m", "membench", "sweep", "--models", "opt-125m,gpt2", "--methods", "full",
            "--seq-lens", "16", "--batch-sizes", batches, "--device", "fake", "--db", str(db),
            "--executor", "sweep_executor:FakeExecutor", "--no-progress"]


def test_two_concurrent_sweeps_lose_no_row(tmp_path):
    db = tmp_path / "shared.db"
    env = dict(os.environ, PYTHONPATH=f"{PLUGINS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               MEMBENCH_FAKE_RUN_S="0.01")
    a = ",".join(str(b) for b in range(1, 41))  # 2 models x 40 batches
    b = ",".join(str(b) for b in range(21, 61))  # overlaps a on batches 21..40
    t0 = time.monotonic()
    procs = [subprocess.Popen(_sweep_cmd(db, bs), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for bs in (a, b)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert time.monotonic() - t0 < 120
    df = results.load(db)
    assert df["key"].is_unique
    assert len(df) == 2 * 60  # every (model, batch) of both sweeps, once
    assert set(df["batch_size"]) == set(range(1, 61))
    layers = results.load_layers(db)
    assert len(layers) == 2 * len(df) and set(layers["run_id"]) == set(df["run_id"])


def test_preflight_finds_bad_names_and_options():
    from membench.sweep.worker import preflight

    ok = RunSpec("opt-125m", "lora", 1, 16, "fp32", "fake", tiny=True, method_options={"r": 4})
    assert preflight([ok.to_dict()]) == []
    bad = [RunSpec("opt-125m", "nosuch", 1, 16, "fp32", "fake"),
           RunSpec("opt-125m", "lora", 1, 16, "fp32", "fake", method_options={"rank": 4}),
           RunSpec("opt-125m", "full", 1, 16, "fp32", "fake", overrides={"num_layerz": 2})]
    problems = preflight([s.to_dict() for s in bad])
    assert len(problems) == 3
    assert "unknown method 'nosuch'" in problems[0]["message"] and problems[0]["field"] is None
    assert "has no option 'rank'" in problems[1]["message"] and problems[1]["field"] == ["option", "rank"]
    assert "unknown config key 'num_layerz'" in problems[2]["message"]
    assert problems[2]["field"] == ["override", "num_layerz"]


def test_problem_in_experiment_file_points_at_its_line(tmp_path):
    from membench.sweep import experiment as xp

    f = tmp_path / "exp.toml"
    f.write_text(GOOD.replace("r = 4", "rank = 4"))
    exp = xp.resolve(f)
    msg = xp.locate("method 'lora' has no option 'rank'; options: r, alpha", ("option", "rank"), exp)
    assert msg.startswith(f"{f}:17: key 'options.lora.rank'")
    assert xp.locate("anything", None, exp) == "anything"  # not a setting: nothing to point at
    assert xp.locate("x", ("override", "rank"), exp) == "x"  # not among the file's overrides


def test_preflight_problems_are_located_in_the_file_when_run(tmp_path):
    from membench.sweep import experiment as xp

    class Refuses(FakeExecutor):
        def preflight(self, specs):
            return ["a plain line", {"message": "method 'lora' has no option 'rank'", "field": ["option", "rank"]}]

    f = tmp_path / "exp.toml"
    f.write_text(GOOD.replace("r = 4", "rank = 4"))
    exp = xp.resolve(f, db=str(tmp_path / "x.db"))
    with pytest.raises(UserError, match=rf"^a plain line; {re.escape(str(f))}:17: key 'options.lora.rank'"):
        xp.run(exp, executor=Refuses())


def test_budget_summary(tmp_path, cli):
    from membench.cli.sweep_view import summary_table
    from membench.sweep.experiment import budget_bytes

    assert budget_bytes("24GiB") == 24 * 2**30 and budget_bytes("80GB") == 80 * 10**9
    assert budget_bytes(1024) == 1024 and budget_bytes("1.5 KiB") == 1536 and budget_bytes(None) is None
    for bad in ("24QB", "-1GB", "lots", "0"):
        with pytest.raises(UserError, match="--budget"):
            budget_bytes(bad)
    db = tmp_path / "b.db"
    specs = grid(models=["opt-125m"], methods=["full"], seq_lens=[100], batch_sizes=[1, 2, 4, 8]).expand()
    run_sweep(specs, db=db, executor=FakeExecutor())
    # fake peak = 40_000 + 1500 * tokens: b2 -> 340_000, b4 -> 640_000
    table = summary_table(str(db), [s.key() for s in specs], budget=500_000)
    cells = [list(col.cells) for col in table.columns]
    assert cells[-1] == ["[green]2[/]"] and cells[5] == ["8"]
    table = summary_table(str(db), [s.key() for s in specs], budget=10_000)
    assert list(table.columns[-1].cells) == ["[red]none[/]"]
