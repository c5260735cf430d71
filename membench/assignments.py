"""`KEY=VALUE` arguments (`--override`, `--option`), parsed without importing torch."""

from __future__ import annotations

import json

from .errors import UserError


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
