"""Tables at 80 columns and in a pipe: headers and cells fold, never cut ("…") or drop; names stay whole."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from membench.backbones.tiny import tiny_overrides


def _membench(*args, cwd, stderr=False):
    env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):  # a pipe, whatever the caller's terminal
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "membench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)  # stdout and stderr are pipes
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (proc.stdout, proc.stderr) if stderr else proc.stdout


def _widest(out: str) -> int:
    return max(len(line) for line in out.splitlines())


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory):
    """A sweep over two OPT models with the same 5-character prefix, two methods, two batch sizes."""
    folder = tmp_path_factory.mktemp("sweep80")
    ov = tiny_overrides("opt", layers=1)
    sets = [a for k, v in ov.items() for a in ("--override", f"{k}={v}")]
    out, err = _membench("sweep", "--models", "opt-125m,opt-1.3b", "--methods", "full,lora+ckpt", "--seq-lens", "8",
                         "--batch-sizes", "1,2", "--db", "s.db", "--budget", "1GiB", *sets, cwd=folder, stderr=True)
    return folder, out, err


def test_sweep_summary_keeps_names_whole(sweep_db):
    _folder, out, _err = sweep_db
    assert "…" not in out and _widest(out) <= 80
    assert "opt-125m" in out and "opt-1.3b" in out and "lora+ckpt" in out
    shown = set(out.replace("│", " ").replace("┃", " ").split())
    headers = "model method batch: status largest ok batch peak there activations there largest batch in budget"
    assert [word for word in headers.split() if word not in shown] == []  # no "large / st", "budge / t"


def test_sweep_through_a_pipe_prints_a_line_per_run(sweep_db):
    _folder, _out, err = sweep_db
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in lines] == [f"[{i}/8" for i in range(1, 9)], err
    for model in ("opt-125m", "opt-1.3b"):
        for method in ("full", "lora+ckpt"):
            for b in (1, 2):
                assert any(f"] {model} {method} b{b} s8 fp32: ok (" in line for line in lines), (model, method, b)


def test_results_keeps_every_column(sweep_db):
    folder, _, _ = sweep_db
    out = _membench("results", "--db", "s.db", cwd=folder)
    assert "…" not in out and _widest(out) <= 80
    header = next(line for line in out.splitlines() if "model" in line and "method" in line)
    assert "opt-125m" in out and "opt-1.3b" in out and "lora+ckpt" in out
    assert header  # the model column is there
    stamped = [line for line in out.splitlines() if re.search(r"│ \d\d-\d\d \d\d:\d\d ", line)]
    assert len(stamped) == 8, out  # one timestamp per run, whole on one line


def test_verify_headers_fold_not_cut(tmp_path):
    ov = tiny_overrides("bert", layers=2)
    sets = [a for k, v in ov.items() for a in ("--override", f"{k}={v}")]
    env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "membench", "verify", "-m", "bert-base", "--method", "meft1",
                           "--dtype", "fp64", *sets], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    out = proc.stdout
    assert "…" not in out and _widest(out) <= 80
    flat = out.replace("│", " ").replace("\n", " ")
    for word in ("reconstruction", "relative", "starting-point"):  # whole words, never folded
        assert word in flat.split()
