"""The tensors a model holds before a step: its parameters, its buffers, and what parameters hold beside them.

A quantized weight keeps its scales as attributes of the parameter, not as parameters or buffers:
bitsandbytes' Params4bit holds a QuantState (absmax, code, offset, and with double quantization a nested
QuantState), Int8Params its row scales (SCB). They are allocated with the weights and live as long, so the
profilers count them as weights (`weight_tensors`), and fake backends convert them with the parameter
(`convert_attached`). Found by walking the parameter's attributes (a few levels of plain objects), so no
quantization library is named here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

_DEPTH = 3


def _walk(obj, depth: int, out: list) -> None:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
        return
    if depth == 0 or isinstance(obj, nn.Module | type) or not hasattr(obj, "__dict__"):
        return
    for value in vars(obj).values():
        _walk(value, depth - 1, out)


def attached(param: torch.Tensor) -> list[torch.Tensor]:
    """Tensors a parameter holds as attributes (a quantized weight's scales), itself excluded."""
    out: list[torch.Tensor] = []
    for value in getattr(param, "__dict__", {}).values():
        _walk(value, _DEPTH, out)
    return [t for t in out if t is not param]


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Parameters, then what they hold (attached), then buffers: every tensor the model keeps across steps."""
    params = list(model.parameters())
    return params + [t for p in params for t in attached(p)] + list(model.buffers())


def convert_attached(old: torch.Tensor, new: torch.Tensor, convert: Callable, memo: dict) -> None:
    """Give `new` (the converted parameter) `old`'s attributes, every tensor in them converted with `convert`
    and every plain object copied once (`memo`: id -> its copy, shared by all parameters and modules)."""
    for name, value in getattr(old, "__dict__", {}).items():
        setattr(new, name, _convert(value, convert, memo, _DEPTH))


def _convert(obj, convert, memo, depth):
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, torch.Tensor):
        memo[id(obj)] = convert(obj)
    elif depth == 0 or isinstance(obj, nn.Module | type) or not hasattr(obj, "__dict__"):
        return obj
    else:
        twin = copy.copy(obj)
        memo[id(obj)] = twin
        for name, value in vars(obj).items():
            setattr(twin, name, _convert(value, convert, memo, depth - 1))
    return memo[id(obj)]


def relink_modules(model: nn.Module, memo: dict) -> None:
    """Module attributes that named an object `convert_attached` copied now name the copy (Linear4bit keeps its
    weight's QuantState as `quant_state` too)."""
    for m in model.modules():
        for name, value in list(vars(m).items()):
            if not name.startswith("_") and id(value) in memo:
                setattr(m, name, memo[id(value)])
