"""pyproject.toml's dependency floors are what `nox -s oldest` installs, and they cover the GPU machines' stack."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
nox = pytest.importorskip("nox")


@functools.cache
def _noxfile():
    """noxfile.py, loaded once (a second load registers its sessions again, which nox warns about)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("membench_noxfile", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def test_every_dependency_has_one_floor_that_the_oldest_session_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = _noxfile().oldest_pins(str(ROOT / "pyproject.toml"))
    assert len(pins) == len(deps)
    assert all("==" in p and "<" not in p for p in pins)


def test_the_floors_cover_the_gpu_machines_torch_211_and_transformers_517():
    pins = dict(p.split("==") for p in _noxfile().oldest_pins(str(ROOT / "pyproject.toml")))
    assert _version(pins["torch"]) <= (2, 11)
    assert _version(pins["transformers"]) <= (5, 17)
    assert "peft" in pins


def test_a_dependency_without_a_floor_is_refused(tmp_path):
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[project]\nname = "x"\ndependencies = ["torch", "peft>=0.18"]\n')
    with pytest.raises(ValueError, match="no single lower bound"):
        _noxfile().oldest_pins(str(bad))
