"""The precision table (membench.dtypes): every spelling, the error's list and every help text come from its rows."""

from __future__ import annotations

import pytest
import torch

from membench import dtypes
from membench.errors import UserError


@pytest.mark.parametrize("precision", dtypes.PRECISIONS, ids=[p.short for p in dtypes.PRECISIONS])
def test_every_spelling_of_a_row_names_it(precision):
    for spelling in precision.spellings:
        for typed in (spelling, spelling.upper(), f" {spelling} "):
            assert dtypes.get(typed) is precision
            assert dtypes.canonical(typed) == precision.torch_name and dtypes.short(typed) == precision.short
    assert isinstance(dtypes.to_torch(precision.short), torch.dtype)


def test_the_aliases_users_type_today():
    assert dtypes.canonical("half") == "float16" and dtypes.canonical("double") == "float64"
    assert dtypes.help_text() == "fp32, bf16, fp16 or fp64"
    with pytest.raises(UserError, match=r"^unknown dtype 'fp8'; allowed: fp32/float32, bf16/bfloat16, fp16/float16, "
                                        r"fp64/float64$"):
        dtypes.get("fp8")


def test_a_subset_is_listed_in_its_own_order_and_checked():
    assert dtypes.help_text(("fp32", "float64", "bf16")) == "fp32, fp64 or bf16"
    with pytest.raises(UserError, match="unknown dtype 'int8'"):
        dtypes.help_text(("fp32", "int8"))


@pytest.mark.parametrize(("command", "listed"), [("run", "fp32, bf16, fp16 or fp64"), ("train", "fp32, bf16, fp16 or fp64"),
                                                 ("verify", "fp32, fp64 or bf16")])
def test_each_commands_dtype_help_is_generated(cli, command, listed, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = cli(command, "--help")
    assert code == 0 and listed in out
