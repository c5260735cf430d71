"""Shared fixtures: tiny deterministic models for every family, and a CLI runner."""

from __future__ import annotations

import os

import pytest
import torch

from membench.backbones.tiny import FAMILY_MODELS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# tiny models are overhead-bound: one thread is fastest, and CI has only 2 cores
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(params=sorted(FAMILY_MODELS))
def family_name(request) -> str:
    return request.param


@pytest.fixture
def cli(capsys):
    """Run `membench ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from membench.cli import main

    def invoke(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke
