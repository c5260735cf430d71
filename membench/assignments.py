"""Command-line values parsed without importing torch: `KEY=VALUE` (`--override`, `--option`),
`METHOD.KEY=VALUE` (a sweep's `--option`) and comma-separated lists; and the one rule that makes a
given value the type of the setting it is for (`coerce_like`)."""

from __future__ import annotations

import json
import re

from .errors import UserError

_FILTER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|>=|<=|=|>|<)\s*(.*?)\s*$")


def parse_assignments(items, flag: str = "override", example: str = "num_hidden_layers=24",
                      json_values: bool = True) -> dict[str, object]:
    """['num_hidden_layers=2', 'hidden_act=relu'] -> {'num_hidden_layers': 2, 'hidden_act': 'relu'}.

    Values are parsed as JSON when they can be (numbers, booleans, lists), else kept as strings.
    """
    out: dict[str, object] = {}
    for item in items or ():
        if "=" not in item:
            raise UserError(f"bad {flag} {item!r}: expected KEY=VALUE, e.g. {example}")
        key, raw = (s.strip() for s in item.split("=", 1))
        if not key:
            raise UserError(f"bad {flag} {item!r}: empty key")
        if json_values:
            try:
                out[key] = json.loads(raw)
            except json.JSONDecodeError:
                out[key] = raw
        else:
            out[key] = raw
    return out


def parse_options(items: list[str] | None) -> dict[str, str]:
    """`--option KEY=VALUE` (repeatable) -> {KEY: "VALUE"}; each method coerces its own values."""
    return parse_assignments(items, flag="--option", example="r=16", json_values=False)


def parse_method_options(items: list[str] | None) -> dict[str, dict[str, object]]:
    """A sweep's `--option METHOD.KEY=VALUE` (repeatable) -> {METHOD: {KEY: value}} (JSON values)."""
    out: dict[str, dict[str, object]] = {}
    for item in items or ():
        lhs = item.split("=", 1)[0]
        if "=" not in item or "." not in lhs or not lhs.split(".", 1)[1].strip():
            raise UserError(f"bad --option {item!r}: expected METHOD.KEY=VALUE, e.g. lora.r=16")
        for key, value in parse_assignments([item], flag="--option", example="lora.r=16").items():
            method, name = (s.strip() for s in key.split(".", 1))
            out.setdefault(method, {})[name] = value
    return out


def split_list(value: str | None, flag: str, cast: type = str) -> list | None:
    """'1,4,16' -> [1, 4, 16] (cast int) or ['a', 'b']; None stays None (the flag was not given)."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if any(not v for v in items):
        raise UserError(f"{flag} {value!r}: empty value in the comma-separated list")
    if cast is int:
        out = []
        for v in items:
            try:
                out.append(int(v))
            except ValueError:
                raise UserError(f"{flag}: {v!r} is not an integer") from None
        return out
    return items


def coerce_like(value, default, what: str):
    """`value` (from a command line or a file) made the type of the setting's `default`; UserError
    "{what}={value}: expected ..." when it cannot be. A string is read as JSON unless the setting is a
    string; a list setting also takes "a,b" or one bare name. No default (None): the value as given."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            if isinstance(default, list | tuple) or default is None:
                value = [v for v in value.split(",") if v] if "," in value or isinstance(default, list | tuple) \
                    else value
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"{what}={value!r}: expected true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{what}={value!r}: expected an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{what}={value!r}: expected a number")
        value = float(value)
    elif isinstance(default, list | tuple) and isinstance(value, str):
        value = [value]
    elif isinstance(default, str) and value is not None and not isinstance(value, str):
        value = str(value)
    return value


def parse_filters(items: list[str] | None) -> list[tuple[str, str, object]]:
    """`--filter method=lora`, `batch_size>=4`, `model!=a,b` -> [(column, op, value)] for results.load."""
    out = []
    for item in items or []:
        m = _FILTER.match(item)
        if not m or not m.group(3):
            raise UserError(f"bad --filter {item!r}: expected COLUMN=VALUE, COLUMN!=VALUE or COLUMN>=NUMBER, "
                            "e.g. method=lora or batch_size>=4")
        col, op, value = m.groups()
        op = "==" if op == "=" else op
        out.append((col, op, value.split(",") if "," in value and op in ("==", "!=") else value))
    return out
