"""Options are never silently accepted: no user-visible "0 means default", no modifier twice, no placeholders."""

from __future__ import annotations

import pytest

from membench import UserError, profile
from membench.backbones.tiny import tiny


def _cli_run(cli, *extra):
    model, ov = tiny("bert", layers=2)
    args = ["run", "-m", model, "-b", "1", "-s", "8"]
    for k, v in ov.items():
        args += ["--override", f"{k}={v}"]
    return cli(*args, *extra)


def test_meft_rank_zero_is_refused_and_absent_means_the_default(cli):
    code, _out, err = _cli_run(cli, "--method", "meft1", "-o", "r=0")
    assert code == 2 and "adapter rank r must be a positive integer, got 0" in err
    for bad, message in (("lam=0", "lam and beta must be > 0"), ("lam=abc", "expected a number"),
                         ("r=2.5", "positive integer")):
        code, _out, err = _cli_run(cli, "--method", "meft3", "-o", bad)
        assert code == 2 and message in err, (bad, err)
    model, ov = tiny("bert", layers=2)
    default = profile(model, "meft1", batch_size=1, seq_len=8, device="fake", overrides=ov)
    eight = profile(model, "meft1", batch_size=1, seq_len=8, device="fake", overrides=ov, method_options={"r": 8})
    assert default.method_options["r"] == 8 and default.num_trainable_params == eight.num_trainable_params
    assert default.method_options["lam"] == 0.1 and default.method_options["beta"] == 1.0


def test_a_modifier_twice_is_refused(cli):
    code, _out, err = _cli_run(cli, "--method", "meft1+ckpt+ckpt")
    assert code == 2 and "modifier 'ckpt' is given twice" in err and len(err.strip().splitlines()) == 1


def test_list_verbose_shows_resolved_defaults_never_placeholders(cli, monkeypatch):
    from membench.cli.format import console

    monkeypatch.setattr(console, "_width", 400)  # one line per row, so cells can be searched
    code, out, err = cli("list", "--verbose", "--model", "opt-125m")
    assert code == 0, err
    flat = " ".join(out.split())
    for placeholder in ("lam=-1", "beta=-1", "r=0", "_restore_rng", "variant=meft"):
        assert placeholder not in flat, placeholder
    assert "lam=1.0, beta=0.1, r=64" in flat  # meft2 on a decoder family, as it runs


@pytest.mark.parametrize(("method", "option", "message"), [
    ("lora", "r=0", "option lora.r=0: the rank must be a positive integer"),
    ("lora", "r=-1", "option lora.r=-1: the rank must be a positive integer"),
    ("lora", "dropout=1.5", "option lora.dropout=1.5: must be in [0, 1)"),
    ("houlsby", "r=0", "option houlsby.r=0: the bottleneck width must be a positive integer"),
    ("pfeiffer", "dropout=-0.1", "option pfeiffer.dropout=-0.1: must be in [0, 1)"),
    ("houlsby", "std=-1", "option houlsby.std=-1.0: must be >= 0"),
    ("prefix", "num_virtual_tokens=0", "option prefix.num_virtual_tokens=0: must be a positive integer"),
    ("prefix", "encoder_hidden_size=-4", "option prefix.encoder_hidden_size=-4: must be >= 0"),
    ("meft3", "lam=0", "lam and beta must be > 0"),
])
def test_numeric_options_are_checked_before_the_model_is_built(cli, monkeypatch, method, option, message):
    """Every method's numeric options as `-o lam=0` is: one line, exit 2, before any model is built (peft
    would raise its own traceback for lora r=0)."""
    from membench.backbones.base import Family

    def no_build(*a, **k):
        raise AssertionError("the model was built before the options were checked")

    monkeypatch.setattr(Family, "build", no_build)
    code, _out, err = _cli_run(cli, "--method", method, "-o", option)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_a_checked_option_names_its_field():
    """A sweep points at the option's line in its file by the error's field."""
    from membench import methods
    from membench.backbones import FAMILIES

    with pytest.raises(UserError) as err:
        methods.get("lora").make_config(FAMILIES["bert"], {"r": 0})
    assert err.value.field == ("option", "r")
