"""The bounds issue 19 set on how many places a run option, a list or a device rule is typed in
(benchmarks/structure.py measures them; `python benchmarks/structure.py` prints where)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("membench_structure", ROOT / "benchmarks" / "structure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.figures()


def test_one_run_option_is_named_in_at_most_four_files(figures):
    """alloc_conf: its field (spec), the backend that uses it, the keyword API, and the figures that record it."""
    assert len(figures["files mentioning alloc_conf"]) <= 4, figures["files mentioning alloc_conf"]


def test_only_the_keyword_convenience_api_takes_more_than_eight_parameters(figures):
    wide = {w.split(" ")[1] for w in figures["functions with more than 8 parameters"]}
    assert wide <= {"profile", "profile_module"}, figures["functions with more than 8 parameters"]


def test_no_device_or_target_name_is_compared_outside_the_backends(figures):
    assert figures["device/target name comparisons outside membench/backends.py"] == []


def test_the_optimizers_and_the_gpus_are_listed_once(figures):
    assert len(figures["places listing the optimizers"]) == 1, figures["places listing the optimizers"]
    assert len(figures["places listing the GPUs"]) == 1, figures["places listing the GPUs"]
