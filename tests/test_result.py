"""membench.result: the one rule that names a run's model."""

import pytest

from membench.result import model_name


def test_model_name_rule(tmp_path):
    assert model_name("opt-125m", "/ckpt/x") == "opt-125m"  # a named model wins
    assert model_name(None, str(tmp_path / "sst2")) == "sst2"
    assert model_name(None, str(tmp_path / "sst2" / "final")) == "sst2"  # generic folder names: the parent's
    assert model_name(None, str(tmp_path / "sst2" / "checkpoint") + "/") == "sst2"
    assert model_name(None, None, "all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    with pytest.raises(ValueError):
        model_name(None, None)
