"""A block's residual input, as an autograd edge that a recompute can route.

A post-LN block, y = LN(x + f(x)), hands x two gradients in backward: the residual's (the
LayerNorm's input gradient, a new tensor, produced first) and f's (produced last). Autograd keeps
the first in x's input buffer until the second arrives, so through f's backward (the attention's:
MEFT's peak) one more hidden state is live. A reversible recompute knows where x's gradient goes
(into a stream gradient): inside `residual_sink(x, add)`, `residual(x)` is an alias of x whose
gradient is handed to `add` as soon as it exists, and passes nothing on to x.

Families write each block's residual input as `residual(hidden)`; outside a sink (plain autograd,
eval, the reversible forward) it is `hidden` itself.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable

import torch

_SINK: contextvars.ContextVar = contextvars.ContextVar("membench_residual_sink", default=None)


class _IntoSink(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, add):
        ctx.add = add
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.add(grad)
        return None, None


def residual(x: torch.Tensor) -> torch.Tensor:
    """x, or (inside `residual_sink(x, add)`, with grad enabled) an alias whose gradient goes to add."""
    sink = _SINK.get()
    if sink is None or sink[0] is not x or not torch.is_grad_enabled():
        return x
    return _IntoSink.apply(x, sink[1])


@contextlib.contextmanager
def residual_sink(x: torch.Tensor, add: Callable[[torch.Tensor], None]):
    """While a block runs on x: its residual's gradient is add()ed, not accumulated into x's."""
    token = _SINK.set((x, add))
    try:
        yield
    finally:
        _SINK.reset(token)
