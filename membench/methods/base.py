"""The method interface: one small module per method, registered by name.

A method turns a freshly built backbone model into the model that trains, and says what trains in it:

    model = method.apply(model, family, options)     # options: the method's Config dataclass
    which = method.trainable(model, family, options) # membench.methods.trainable: set once by the builder

It may insert modules (adapters, LoRA) or change how the stack runs (checkpointing, MEFT); the
parameters `trainable` selects train, every other is frozen. A *modifier* (e.g. `ckpt`) is applied
after any method: `lora+ckpt`; what it declares trains as well (by default: nothing).
What a method is (reversible, the modalities it reads) are attributes, so no code tests its name.
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

    def check(self, method: str) -> None:
        """Refuse values `method` cannot run with, before any model is built: one line naming the option
        (the helpers below). Every numeric option is checked here, so none reaches peft or torch (whose
        errors are tracebacks)."""


def bad_option(method: str, key: str, value, allowed: str) -> UserError:
    return UserError(f"option {method}.{key}={value!r}: {allowed}", field=("option", key))


def require_positive_int(method: str, key: str, value, what: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise bad_option(method, key, value, f"{what + ' ' if what else ''}must be a positive integer")


def require_non_negative(method: str, key: str, value, what: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise bad_option(method, key, value, f"{what + ' ' if what else ''}must be >= 0")


def require_fraction(method: str, key: str, value) -> None:
    """A dropout probability: [0, 1) (1 would drop everything)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise bad_option(method, key, value, "must be in [0, 1)")


class Method:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    is_modifier: ClassVar[bool] = False
    # what a method is, for code that must know it without testing names
    reversible: ClassVar[bool] = False  # activations recomputed in backward from the layer outputs (MEFT)
    checkpoints: ClassVar[bool] = False  # a modifier that checkpoints every layer (+ckpt)
    modalities: ClassVar[tuple[str, ...]] = ("text", "image")  # the inputs (Family.modality) it applies to

    def apply(self, model, family, cfg: MethodConfig):  # pragma: no cover - interface
        raise NotImplementedError

    def trainable(self, model, family, cfg: MethodConfig):
        """What trains in `model` (as `apply` returned it): a predicate (name, parameter) -> bool, built
        from membench.methods.trainable (everything, among(params), marked(model), task_head, either).
        A modifier adds what it declares to its method's; by default it trains nothing of its own."""
        from . import trainable

        if self.is_modifier:
            return trainable.nothing
        raise NotImplementedError(f"method {self.name!r} does not declare which parameters train "
                                  "(Method.trainable)")

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
        cfg = self.Config(**values)
        cfg.check(self.name)
        return cfg


def neighbour(module):
    """(device, dtype) that new modules beside `module` are created in (never moved afterwards): its first
    floating-point parameter's. A quantized weight's integer storage is skipped; a module of quantized weights
    only gets fp32 (what peft makes adapters in on a quantized base, and the dtype prepare_model_for_kbit_training
    leaves the rest of the model in)."""
    import torch

    params = list(module.parameters())
    if not params:
        raise RuntimeError(f"cannot place new modules next to {type(module).__name__}: it has no parameter")
    p = next((p for p in params if p.is_floating_point()), None)
    return (p.device, p.dtype) if p is not None else (params[0].device, torch.float32)


def unwrap_peft(model):
    """The transformers model under a peft wrapper (the families' `stacks()` expect it), else `model`."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _coerce(method: str, key: str, f: dataclasses.Field, value):
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    return coerce_like(value, default, f"option {method}.{key}")
