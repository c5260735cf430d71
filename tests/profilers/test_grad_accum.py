"""Gradient accumulation (StepPlan.micro_steps, `--grad-accum`): N forward and backward passes, then one
optimizer step; the gradients of the first stay allocated through the next ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from membench.profilers.step import StepPlan, profile_step


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))


def _batch():
    return (torch.randn(8, 16, generator=torch.Generator().manual_seed(1)),)


def test_the_second_micro_step_runs_with_the_gradients_allocated():
    step = profile_step(_mlp(), _batch(), StepPlan(micro_steps=2))
    assert step.phases[:5] == ["forward", "backward", "forward.m2", "backward.m2", "optimizer"]
    live = step.live
    # the same forward, plus every gradient of the first micro-step
    assert live.peak(phases=["forward.m2"]).bytes == live.peak(phases=["forward"]).bytes + step.grad_bytes


def test_the_ledger_describes_one_micro_batch():
    one = profile_step(_mlp(), _batch(), StepPlan(micro_steps=1))
    three = profile_step(_mlp(), _batch(), StepPlan(micro_steps=3))
    assert three.activation_bytes == one.activation_bytes > 0 and three.recompute_bytes == one.recompute_bytes
    assert three.ledger.by_group == one.ledger.by_group
    assert three.estimated_peak_bytes >= one.estimated_peak_bytes


@pytest.mark.parametrize("n", [2, 3])
def test_accumulated_gradients_are_the_mean_over_the_micro_steps(n):
    """The loss is divided by the micro-steps, as accumulation does: n equal micro-batches give one batch's gradient."""
    # profile_step zeroes the gradients when it ends: read them inside the optimizer step instead
    seen = {}

    def recording_sgd(micro_steps):
        class Recording(torch.optim.SGD):
            def step(self, closure=None):
                seen[micro_steps] = [p.grad.clone() for g in self.param_groups for p in g["params"]]
                return super().step(closure)
        return lambda ps: Recording(ps, lr=0)

    for m in (1, n):
        profile_step(_mlp(), _batch(), StepPlan(micro_steps=m, optimizer=recording_sgd(m), track_live=False))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(seen[1], seen[n], strict=True))


def test_later_steps_accumulate_too():
    step = profile_step(_mlp(), _batch(), StepPlan(micro_steps=2, steps=2))
    assert step.phases == ["forward", "backward", "forward.m2", "backward.m2", "optimizer",
                           "forward.2", "backward.2", "forward.2.m2", "backward.2.m2", "optimizer.2"]
