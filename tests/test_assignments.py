"""membench.assignments: command-line values, and the one coercion rule for options and overrides."""

import pytest

from membench.assignments import coerce_like, parse_method_options, split_list
from membench.errors import UserError


@pytest.mark.parametrize(("value", "default", "expected"), [
    ("16", 8, 16), ("0.5", 1.0, 0.5), (2, 1.0, 2.0), ("true", False, True), ("q,v", [], ["q", "v"]),
    ("query", ["q"], ["query"]), ('["a"]', None, ["a"]), ("relu", "gelu", "relu"), (3, "x", "3"),
    ("plain", None, "plain"),
])
def test_coerce_like_makes_the_settings_type(value, default, expected):
    assert coerce_like(value, default, "option x.k") == expected


@pytest.mark.parametrize(("value", "default", "message"), [
    ("abc", 8, "option x.k='abc': expected an integer"), (True, 8, "expected an integer"),
    ("1", True, "expected true or false"), ("x", 1.0, "expected a number"), (None, 8, "expected an integer"),
])
def test_coerce_like_refuses_with_the_setting_named(value, default, message):
    with pytest.raises(UserError, match=message):
        coerce_like(value, default, "option x.k")


def test_method_options_and_lists():
    assert parse_method_options(["lora.r=16", "lora.alpha=32", "meft3.lam=0.1"]) == {
        "lora": {"r": 16, "alpha": 32}, "meft3": {"lam": 0.1}}
    for bad in ("r=16", "lora.=3", "lora.r"):
        with pytest.raises(UserError, match="expected METHOD.KEY=VALUE"):
            parse_method_options([bad])
    assert split_list("1, 4,16", "--batch-sizes", int) == [1, 4, 16] and split_list(None, "--x") is None
    with pytest.raises(UserError, match="not an integer"):
        split_list("1,x", "--batch-sizes", int)
    with pytest.raises(UserError, match="empty value"):
        split_list("a,,b", "--methods")


def test_results_filters():
    from membench.assignments import parse_filters

    assert parse_filters(["method=lora", "batch_size>=4", "model!=a,b"]) == [
        ("method", "==", "lora"), ("batch_size", ">=", "4"), ("model", "!=", ["a", "b"])]
    for bad in ("method", "=lora", "batch_size>="):
        with pytest.raises(UserError, match="bad --filter"):
            parse_filters([bad])
