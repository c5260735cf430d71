"""Saved-tensor ledger: exact bytes on toy models whose saves are counted by hand.

Notation in the hand counts: fp32 = 4 bytes per element; B = 2 rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from membench.profilers import FORWARD, RECOMPUTE, SavedTensorLedger, profile_step


class Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.lin = nn.Linear(n_in, n_out)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.lin(x))


class Square(nn.Module):
    def forward(self, x):
        v = x.view(-1)  # a view: same storage as x
        return (v * v).sum()  # mul saves v twice; sum saves nothing


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(4, 8), Block(8, 8)])
        self.head = Square()

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def groups_of(model):
    g = {m: "head" for m in model.modules()}
    for i, layer in enumerate(model.layers):
        for m in layer.modules():
            g[m] = f"layers.{i}"
    return g


def run_ledger(model, x, **kw):
    with SavedTensorLedger(model, groups_of(model), inputs=(x,), **kw) as ledger:
        loss = model(x)
        ledger.phase = RECOMPUTE
        loss.backward()
    return ledger


def test_toy_exact_bytes_counted_by_hand():
    torch.manual_seed(0)
    model, x = Toy(), torch.randn(2, 4)
    ledger = run_ledger(model, x)
    rep = ledger.report()
    # layers.0: Linear(4->8) saves x (a model input: reported apart, 2*4*4 = 32 B), not W.t()
    #           (x needs no grad); GELU saves its input h0: 2*8*4 = 64 B            -> 64
    # layers.1: Linear(8->8) saves g0 = gelu(h0) (64 B) and W1.t() (a parameter: never counted);
    #           GELU saves h1 (64 B)                                               -> 128
    # head:     v = g1.view(-1); v * v saves v twice, one storage of 64 B          -> 64
    assert rep.by_group == {"layers.0": {FORWARD: 64}, "layers.1": {FORWARD: 128}, "head": {FORWARD: 64}}
    assert rep.total(FORWARD) == 256
    assert rep.total(RECOMPUTE) == 0
    assert rep.input_bytes == 2 * 4 * 4
    assert rep.weight_copy_bytes == 0
    # per module: the innermost module whose forward runs is charged
    assert rep.by_module == {"layers.0.act": {FORWARD: 64}, "layers.1.lin": {FORWARD: 64},
                             "layers.1.act": {FORWARD: 64}, "head": {FORWARD: 64}}
    # pack calls before de-duplication: x, h0, g0, W1.t(), h1, v, v
    assert rep.saves == 7
    assert [c.saves for c in ledger.charges] == [1, 1, 1, 2]


def test_hand_count_scales_with_dtype_and_batch():
    torch.manual_seed(0)
    model = Toy().to(torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    rep = run_ledger(model, x).report()
    # same saves as above, 5 rows of 8 bytes: h0 = 5*8*8 = 320 B
    assert rep.by_group == {"layers.0": {FORWARD: 320}, "layers.1": {FORWARD: 640}, "head": {FORWARD: 320}}
    assert rep.input_bytes == 5 * 4 * 8


def test_views_of_one_storage_are_charged_once_and_whole():
    class Split(nn.Module):
        def forward(self, h):
            a, b = h[:, :3], h[:, 3:]  # two views of h's storage (2x8 fp32 = 64 B)
            return (a.sum(1) * b.sum(1) + (a * 2).sum(1)).sum()

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 8)
            self.split = Split()

        def forward(self, x):
            return self.split(self.lin(x))

    model, x = M(), torch.randn(2, 4)
    with SavedTensorLedger(model, inputs=(x,)) as ledger:
        loss = model(x)
    loss.backward()
    rep = ledger.report()
    # lin saves x (input). In split: a.sum(1) and b.sum(1) are new storages (2 rows * 4 B = 8 B each),
    # mul saves both (16 B); a * 2 saves nothing (scalar); slices save nothing. h itself is never saved.
    assert rep.by_module == {"split": {FORWARD: 16}}
    # now save the views themselves: a * b saves a and b, both views of h -> 64 B, once
    class Split2(nn.Module):
        def forward(self, h):
            return (h[:, :4] * h[:, 4:]).sum()

    model.split = Split2()
    with SavedTensorLedger(model, inputs=(x,)) as ledger:
        loss = model(x)
    loss.backward()
    rep = ledger.report()
    assert rep.by_module == {"split": {FORWARD: 2 * 8 * 4}}  # the whole storage, not 2 x the view size
    assert ledger.charges[0].saves == 2


def test_tensor_saved_by_several_ops_is_charged_once_to_the_first():
    class QKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(8)
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            h = self.ln(x)
            return (self.q(h) + self.k(h) + self.v(h)).sum()

    model = QKV()
    x = torch.randn(3, 8)
    with SavedTensorLedger(model, inputs=(x,)) as ledger:
        loss = model(x)
    loss.backward()
    rep = ledger.report()
    # ln saves x (input), mean and rstd (3x1 fp32 = 12 B each); q, k, v save h (3*8*4 = 96 B) 3 times
    assert rep.by_module == {"ln": {FORWARD: 24}, "q": {FORWARD: 96}}
    assert [c.saves for c in ledger.charges if c.module == "q"] == [3]


def test_parameters_buffers_tied_and_transposed_weights_never_counted():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.w = nn.Parameter(torch.randn(8, 8))
            self.register_buffer("scale", torch.full((8,), 2.0))

        def forward(self, ids):
            h = self.emb(ids)  # embedding saves the ids (input) only
            h = h * self.scale  # saves the buffer (not counted) -- and h? no: scale needs no grad
            h = torch.matmul(h, self.w.t())  # saves h (2*3*8*4 = 192 B) and w.t() (a parameter view)
            logits = F.linear(h, self.emb.weight)  # tied head: saves h2 (192 B) and emb.weight
            return logits.sum()

    model = Tied()
    ids = torch.randint(0, 10, (2, 3))
    with SavedTensorLedger(model, inputs=(ids,)) as ledger:
        loss = model(ids)
    loss.backward()
    rep = ledger.report()
    assert rep.by_module == {"<root>": {FORWARD: 2 * 192}}
    assert rep.input_bytes == 2 * 3 * 8
    param_storages = {id(p.untyped_storage()) for p in model.parameters()}
    assert not any(id(c) in param_storages for c in ledger.charges)


def test_weight_copies_under_autocast_reported_apart():
    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 8), nn.Linear(8, 8)])

        def forward(self, x):
            return self.layers[1](self.layers[0](x)).float().sum()

    model = M()
    model.layers[1].requires_grad_(False)  # frozen, like a LoRA base weight
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = profile_step(model, (x,), groups=groups_of_list(model))
    # layers.0: autocast casts x to bf16 (2*4*2 = 16 B: an activation derived from an input, not a
    #           weight copy) and saves it for W0's gradient; W0's bf16 copy is not saved (x needs no grad)
    # layers.1: W1 is frozen, so its input h is not saved; W1's bf16 copy (8*8*2 = 128 B) is saved for
    #           h's gradient: a weight copy, reported apart, not an activation
    # outside:  .float() and .sum() save nothing
    assert step.ledger.by_group == {"layers.0": {FORWARD: 16}}
    assert step.ledger.weight_copy_bytes == 8 * 8 * 2
    assert step.activation_bytes == 16


def groups_of_list(model):
    return {m: f"layers.{i}" for i, layer in enumerate(model.layers) for m in layer.modules()}


def test_checkpointed_block_is_charged_in_the_recompute_phase():
    torch.manual_seed(0)
    plain, x = Toy(), torch.randn(2, 4)
    ref = run_ledger(plain, x).report()

    class Ckpt(Toy):
        def forward(self, x):
            x = self.layers[0](x)
            x = checkpoint(self.layers[1], x, use_reentrant=False)
            return self.head(x)

    ck = Ckpt()
    ck.load_state_dict(plain.state_dict())
    rep = run_ledger(ck, x).report()
    # forward: the checkpoint discards what layers.1 saves but keeps its input g0 (64 B), charged
    # where checkpoint() is called (the root, grouped with the head here); backward recomputes
    # layers.1, which saves g0 again (already counted) and h1 (64 B): phase "recompute"
    assert rep.by_group["layers.1"] == {RECOMPUTE: 64}
    assert rep.by_module["<root>"] == {FORWARD: 64}
    assert rep.by_group["layers.0"] == ref.by_group["layers.0"] == {FORWARD: 64}
    assert rep.by_group["head"] == {FORWARD: 64 + 64}
    assert rep.total(FORWARD) == ref.total(FORWARD) - 128 + 64


def test_ledger_restores_global_state():
    before = torch.autograd.graph.saved_tensors_hooks.__enter__
    model, x = Toy(), torch.randn(2, 4)
    with pytest.raises(RuntimeError), SavedTensorLedger(model, inputs=(x,)):
        model(x)
        raise RuntimeError("boom")
    assert torch.autograd.graph.saved_tensors_hooks.__enter__ is before
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    # no saved-tensor hooks left behind: a plain step saves normally
    model(x).backward()
