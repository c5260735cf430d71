"""membench.sweep.experiment.resolve: file + flags -> Experiment, pure (nothing runs, nothing is written)."""

from __future__ import annotations

import pytest

from membench.errors import UserError
from membench.sweep import experiment as xp

from .test_sweep_grid import GOOD

# the committed experiment of the sweep tests, with an early-stop spelling and a budget
FILE = GOOD.replace('early_stop = "batch_size"', 'early_stop = "seq"\nbudget = "24GiB"')


def test_flags_win_over_the_file_and_defaults_fill_the_rest(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text(FILE)
    exp = xp.resolve(f, batch_sizes=[4], overrides={"hidden_size": 64}, method_options={"lora": {"alpha": 8}},
                     db=str(tmp_path / "r.db"))
    assert sorted({s.batch_size for s in exp.specs}) == [4] and len(exp.specs) == 4  # 2 methods x 2 lengths
    assert exp.specs[0].overrides == {"num_hidden_layers": 1, "hidden_size": 64}
    lora = next(s for s in exp.specs if s.method == "lora")
    assert lora.method_options == {"r": 4, "alpha": 8}
    assert (exp.name, exp.early_stop, exp.budget, exp.timeout, exp.executor) == ("fits", "seq_len", 24 * 2**30,
                                                                                60.0, "local")
    assert exp.db == str(tmp_path / "r.db") and not (tmp_path / "r.db").exists()  # resolving writes nothing


def test_without_a_file_the_device_comes_from_the_one_default_rule(tmp_path):
    exp = xp.resolve(None, models=["opt-125m"], methods=["full"], seq_lens=[8], batch_sizes=[1],
                     device_default=lambda: "cpu")
    assert [s.device for s in exp.specs] == ["cpu"] and exp.name is None and exp.early_stop is None


@pytest.mark.parametrize(("given", "axis"), [("batch", "batch_size"), (True, "batch_size"), ("seq-len", "seq_len"),
                                             ("none", None), (False, None), (None, None), ("bogus", "bogus")])
def test_early_stop_spellings(given, axis):
    assert xp.early_stop_axis(given) == axis


def test_bad_values_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="unknown model 'opt-9000'"):
        xp.resolve(None, models=["opt-9000"], methods=["full"], seq_lens=[8], batch_sizes=[1], device="fake")
    with pytest.raises(UserError, match="--timeout: must be positive"):
        xp.resolve(None, models=["opt-125m"], methods=["full"], seq_lens=[8], batch_sizes=[1], device="fake",
                   timeout=0)
