"""profile_step's breakdown: parameters, gradients, optimizer state, peaks, on a hand-sized model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from membench.profilers import StepPlan, profile_step


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)  # 16*32 + 32 = 544 parameters
        self.b = nn.Linear(32, 4)  # 32*4 + 4 = 132 parameters
        self.register_buffer("scale", torch.ones(4))  # 16 B

    def forward(self, x):
        return (self.b(torch.relu(self.a(x))) * self.scale).sum()


def test_breakdown_counted_by_hand():
    torch.manual_seed(0)
    m = Two()
    m.a.requires_grad_(False)
    x = torch.randn(3, 16)
    s = profile_step(m, (x,))
    assert s.num_params == 676 and s.num_trainable_params == 132
    assert s.param_bytes == 676 * 4
    assert s.trainable_param_bytes == s.grad_bytes == 132 * 4
    # AdamW: exp_avg and exp_avg_sq per trainable tensor, plus a 0-d fp32 `step` each (2 tensors)
    assert s.optimizer_bytes == 2 * 132 * 4 + 2 * 4
    assert s.buffer_bytes == 16
    assert s.input_bytes == 3 * 16 * 4
    # a is frozen: relu saves its output r (3*32*4 = 384 B), b saves r (same storage) and its
    # output is multiplied by the buffer (saves the buffer only, not counted)
    assert s.activation_bytes == 384
    assert s.peak_activation_bytes >= s.activation_bytes
    assert s.estimated_peak_bytes >= (s.param_bytes + s.buffer_bytes + s.input_bytes + s.optimizer_bytes
                                      + s.peak_activation_bytes)
    assert s.loss is not None and set(s.peak_by_phase) == {"forward", "backward", "optimizer"}
    assert m.a.weight.grad is None and m.b.weight.grad is None  # zeroed after the step


def test_without_live_tracker():
    m, x = Two(), torch.randn(3, 16)
    with_live = profile_step(m, (x,))
    bare = profile_step(m, (x,), StepPlan(track_live=False))
    assert bare.activation_bytes == with_live.activation_bytes
    assert bare.peak_activation_bytes == bare.activation_bytes  # no tracker: the saved total
    assert bare.peak_by_phase == {}


def test_no_trainable_parameter_is_an_error():
    m = Two().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        profile_step(m, (torch.randn(1, 16),))


def test_batches_as_dict_tuple_tensor_and_custom_loss():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x, y=None):
            out = torch.tanh(self.lin(x))  # tanh saves its output: 2*4*4 = 32 B
            return {"out": out} if y is None else (out * y)

    m, x = Kw(), torch.randn(2, 4)
    a = profile_step(m, {"x": x})
    b = profile_step(m, (x,))
    c = profile_step(m, x)
    d = profile_step(m, {"x": x}, loss_fn=lambda o: o["out"].pow(2).sum())  # pow saves out: same storage
    assert a.activation_bytes == b.activation_bytes == c.activation_bytes == d.activation_bytes == 32
    assert a.input_bytes == 32
