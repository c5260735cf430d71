"""The reversible backward carries the streams down the stack in place (membench/methods/meft/reversible.py).

A toy stack (F, G = tanh(x @ W)) makes every tensor countable: per layer the backward holds the
four stream tensors (x1, x2 and their gradients) and one recompute, never the top outputs a
second time, nor a recomputed output through its backward, nor the gradients autograd handed in."""

from __future__ import annotations

import pytest
import torch

from membench.methods.meft.reversible import ReversibleStack, StackCall, run_stack
from membench.profilers.live import LiveMemoryTracker


class Toy:
    """The Coupling interface ReversibleStack uses, with F, G = tanh(x @ W)."""

    def __init__(self, d, lam, beta, swap):
        self.wf = torch.nn.Parameter(torch.randn(d, d, dtype=torch.float64) / d ** 0.5)
        self.wg = torch.nn.Parameter(torch.randn(d, d, dtype=torch.float64) / d ** 0.5)
        self.lam, self.beta, self.swap = lam, beta, swap

    def F(self, x, args, kwargs, dtype):
        return torch.tanh(x @ self.wf)

    def G(self, x, args, kwargs, dtype):
        return torch.tanh(x @ self.wg)

    def chunked(self, which):
        return False

    def params(self):
        return [self.wf, self.wg]

    def step(self, x1, x2):  # plain autograd, the reference
        y1 = self.lam * x1 + self.F(x2, (), {}, None)
        y2 = self.beta * x2 + self.G(y1, (), {}, None)
        return (y2, y1) if self.swap else (y1, y2)


def _stack(layers=4, d=16, swap=False, lam=0.5, beta=0.5, checkpoint_every=0):
    torch.manual_seed(0)
    couplings = [Toy(d, lam, beta, swap) for _ in range(layers)]
    return couplings, StackCall(couplings, (), {}, torch.float64, torch.float64, checkpoint_every=checkpoint_every)


def _params(couplings):
    return [p for c in couplings for p in c.params()]


def _direct(call, h):
    """The stack without FreshGradients: the gradients it gets are autograd's (copied before a write)."""
    return ReversibleStack.apply(call, h, *call.flat_params())


ENTRIES = {"run_stack": run_stack, "direct": _direct}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("checkpoint_every", [0, 2])
def test_gradients_match_plain_autograd_and_the_incoming_gradient_is_untouched(entry, swap, checkpoint_every):
    couplings, call = _stack(swap=swap, checkpoint_every=checkpoint_every)
    h = torch.randn(2, 8, 16, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 8, 16, dtype=torch.float64)
    before = dy.clone()
    y1, y2 = ENTRIES[entry](call, h)
    torch.autograd.backward((y1, y2), (dy, dy))  # one tensor for both streams, as an add's backward gives
    rev = [h.grad.clone()] + [p.grad.clone() for p in _params(couplings)]
    assert torch.equal(dy, before), "the gradient autograd handed in was overwritten"

    h.grad = None
    for p in _params(couplings):
        p.grad = None
    x1 = x2 = h
    for c in couplings:
        x1, x2 = c.step(x1, x2)
    torch.autograd.backward((x1, x2), (dy, dy))
    plain = [h.grad] + [p.grad for p in _params(couplings)]
    for a, b in zip(rev, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_top_outputs_carry_the_streams_down_and_a_second_backward_is_refused():
    """Backward writes the reconstruction over the forward's outputs: afterwards they hold the
    bottom layer's inputs, which are the stack input for both streams."""
    couplings, call = _stack(layers=3)
    h = torch.randn(2, 8, 16, dtype=torch.float64, requires_grad=True)
    y1, y2 = run_stack(call, h)
    out = y1 + y2
    assert not torch.allclose(y1, h)
    out.sum().backward(retain_graph=True)
    torch.testing.assert_close(y1.detach(), h.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(y2.detach(), h.detach(), rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError, match="backward ran twice through a reversible MEFT stack"):
        out.sum().backward()


@pytest.mark.parametrize("entry,tensors", [("run_stack", 6), ("direct", 7)])
def test_backward_holds_four_streams_plus_one_recompute(entry, tensors):
    """Peak of the backward, in hidden-state tensors of [2, 4096, 16] float64 (the weights are tiny):
    x1, x2, dx1, dx2, tanh's saved output and its gradient = 6. Without FreshGradients autograd also
    holds the gradient it handed in through the whole call: 7. Before the streams were carried in
    place it was 11 (the two top outputs kept by save_for_backward, the recomputed output through its
    backward, a new tensor for each stream)."""
    couplings, call = _stack(layers=4)
    h = torch.randn(2, 4096, 16, dtype=torch.float64, requires_grad=True)
    tracker = LiveMemoryTracker([h, *_params(couplings)])
    with tracker:
        y1, y2 = ENTRIES[entry](call, h)
        tracker.phase = "backward"
        ((y1 + y2) / 2).sum().backward()
    hidden = h.numel() * h.element_size()
    peak = tracker.peak(phases=("backward",)).bytes
    assert peak < (tensors + 0.1) * hidden, peak / hidden
