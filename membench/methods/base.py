"""The method interface: one small module per method, registered by name.

A method turns a freshly built backbone model into the model that trains:

    model = method.apply(model, family, options)     # options: the method's Config dataclass

It chooses which parameters train (everything else is frozen) and may insert
modules (adapters, LoRA) or change how the stack runs (checkpointing, MEFT).
A *modifier* (e.g. `ckpt`) is applied after any method: `lora+ckpt`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from ..assignments import coerce_like
from ..errors import UserError


@dataclass
class MethodConfig:
    """Options of a method; subclasses add fields with defaults."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Method:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    is_modifier: ClassVar[bool] = False

    def apply(self, model, family, cfg: MethodConfig):  # pragma: no cover - interface
        raise NotImplementedError

    def defaults(self, family) -> dict[str, Any]:
        """Per-family defaults (e.g. LoRA targets); user options win."""
        return {}

    def make_config(self, family, options: dict[str, Any] | None = None) -> MethodConfig:
        values = dict(self.defaults(family)) if family is not None else {}
        fields = {f.name: f for f in dataclasses.fields(self.Config)}
        for key, value in (options or {}).items():
            if key not in fields:
                allowed = ", ".join(fields) or "none"
                raise UserError(f"method {self.name!r} has no option {key!r}; options: {allowed}",
                                field=("option", key))
            try:
                values[key] = _coerce(self.name, key, fields[key], value)
            except UserError as exc:
                raise UserError(str(exc), field=("option", key)) from None
        return self.Config(**values)


def unwrap_peft(model):
    """The transformers model under a peft wrapper (the families' `stacks()` expect it), else `model`."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _coerce(method: str, key: str, f: dataclasses.Field, value):
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    return coerce_like(value, default, f"option {method}.{key}")
