"""Tables at 80 columns and in a pipe: headers and cells fold, never cut ("…") or drop; names stay whole."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from membench.backbones.tiny import tiny_overrides


def _membench(*args, cwd):
    env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "membench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)  # stdout is a pipe
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _widest(out: str) -> int:
    return max(len(line) for line in out.splitlines())


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory):
    """A sweep over two OPT models with the same 5-character prefix, two methods, two batch sizes."""
    folder = tmp_path_factory.mktemp("sweep80")
    ov = tiny_overrides("opt", layers=1)
    sets = [a for k, v in ov.items() for a in ("--override", f"{k}={v}")]
    out = _membench("sweep", "--models", "opt-125m,opt-1.3b", "--methods", "full,lora+ckpt", "--seq-lens", "8",
                    "--batch-sizes", "1,2", "--db", "s.db", *sets, cwd=folder)
    return folder, out


def test_sweep_summary_keeps_names_whole(sweep_db):
    _folder, out = sweep_db
    assert "…" not in out and _widest(out) <= 80
    assert "opt-125m" in out and "opt-1.3b" in out and "lora+ckpt" in out


def test_results_keeps_every_column(sweep_db):
    folder, _ = sweep_db
    out = _membench("results", "--db", "s.db", cwd=folder)
    assert "…" not in out and _widest(out) <= 80
    header = next(line for line in out.splitlines() if "model" in line and "method" in line)
    assert "opt-125m" in out and "opt-1.3b" in out and "lora+ckpt" in out
    assert header  # the model column is there


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
    for word in ("reconstru", "relative", "starting"):
        assert word in flat
