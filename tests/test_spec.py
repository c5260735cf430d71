"""The run description (membench.spec): one spelling per method, one key per run, errors naming their field,
and the command line generated from its fields."""

from __future__ import annotations

import dataclasses

import pytest

from membench.errors import UserError
from membench.spec import MethodSpec, RunSpec
from membench.sweep import Grid


@pytest.mark.parametrize("text, name", [("lora+ckpt", "lora+ckpt"), ("lora + ckpt", "lora+ckpt"),
                                        (" full+ckpt+chunkloss", "full+chunkloss+ckpt"),
                                        ("full + chunkloss + ckpt", "full+chunkloss+ckpt"), ("meft3", "meft3")])
def test_a_method_has_one_canonical_name(text, name):
    parsed = MethodSpec.parse(text)
    assert parsed.name == name and parsed.base == name.split("+")[0]
    assert RunSpec(model="opt-125m", method=text).method == name


@pytest.mark.parametrize("text, match", [("lora+ckpt+ckpt", "given twice"), ("", "empty method name"),
                                         ("lora+", "empty modifier")])
def test_a_bad_method_spelling_is_one_line(text, match):
    with pytest.raises(UserError, match=match):
        MethodSpec.parse(text)


def test_two_spellings_of_a_method_are_one_run_of_a_grid():
    """Grid(methods=["lora+ckpt", "lora + ckpt"]) once expanded to two runs with different keys."""
    assert RunSpec(model="opt-125m", method="lora + ckpt").key() == RunSpec(model="opt-125m", method="lora+ckpt").key()
    with pytest.raises(UserError, match="duplicate value 'lora\\+ckpt'"):
        Grid(models=["opt-125m"], methods=["lora+ckpt", "lora + ckpt"]).expand()


@pytest.mark.parametrize("changes, field", [({"batch_size": 0}, "batch_size"), ({"seq_len": -1}, "seq_len"),
                                            ({"device": "tpu"}, "device"), ({"attn": "flash"}, "attn"),
                                            ({"optimizer": "lion"}, "optimizer"), ({"dtype": "fp8"}, "dtype"),
                                            ({"device": "cpu", "gpu": "a100-80gb"}, "gpu"),
                                            ({"device": "fake", "context": "lots"}, "context"),
                                            ({"device": "fake", "gpu": "v100-32gb", "dtype": "bf16"}, "dtype")])
def test_every_check_names_its_field(changes, field):
    with pytest.raises(UserError) as err:
        RunSpec(model="opt-125m", **changes).validate()
    assert err.value.field == (field,)


def test_validate_spells_the_dtype_as_results_do_and_round_trips():
    spec = RunSpec(model="opt-125m", method="lora", dtype="bfloat16", device="fake").validate()
    assert spec.dtype == "bf16"
    assert RunSpec.from_dict(spec.to_dict()) == spec and RunSpec.from_dict(spec.to_dict()).key() == spec.key()


def test_every_run_option_is_a_flag_of_run_with_the_fields_help(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    code, out, _ = cli("run", "--help")
    assert code == 0
    for f in dataclasses.fields(RunSpec):
        if f.metadata.get("cli", True):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            for name in flag.split("/"):  # a switch: --x/--no-x, both shown
                assert name in out, name
            assert f.metadata["help"].split("{")[0][:20] in out, f.name


def test_gradient_accumulation_is_a_run_option_that_keeps_old_keys(cli, tmp_path):
    import json

    plain = RunSpec(model="opt-125m", method="lora")
    assert plain.key() == RunSpec(model="opt-125m", method="lora", grad_accum=1).key()
    assert plain.key() != RunSpec(model="opt-125m", method="lora", grad_accum=4).key()
    with pytest.raises(UserError, match="gradient accumulation must be a positive integer") as err:
        RunSpec(model="opt-125m", grad_accum=0).validate()
    assert err.value.field == ("grad_accum",)
    out = tmp_path / "r.json"
    code, stdout, _ = cli("run", "-m", "opt-125m", "--method", "lora", "-b", "2", "-s", "16", "--grad-accum", "3",
                          "--override", "num_hidden_layers=1", "--out", str(out))
    assert code == 0 and "x3 accumulated" in stdout
    result = json.loads(out.read_text())
    assert result["grad_accum"] == 3 and "forward.m3" in result["predicted_cuda"]["phases"]
    code, _, err_text = cli("run", "-m", "opt-125m", "--grad-accum", "0")
    assert code == 2 and "gradient accumulation must be a positive integer" in err_text
