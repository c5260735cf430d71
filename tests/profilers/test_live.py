"""Live-memory tracker: storages from birth to free, the peak over the whole step."""

from __future__ import annotations

import gc

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from membench.profilers import LiveMemoryTracker, profile_step


def test_exact_timeline_and_peak():
    with LiveMemoryTracker() as tr:
        a = torch.ones(100)  # +400
        b = torch.ones(200)  # +800  -> 1200 (the peak)
        del a  # -400
        c = torch.ones(50)  # +200  -> 1000
    assert tr.peak().bytes == 1200
    assert tr.live_bytes() == 1000
    del b, c
    assert tr.live_bytes() == 0
    assert tr.peak().bytes == 1200


def test_views_share_the_record_and_keep_the_storage_alive():
    with LiveMemoryTracker() as tr:
        t = torch.zeros(256)  # 1 KiB
        v = t[10:20]
        w = v.view(2, 5)
    assert len(tr.sizes) == 1  # views are not new storages
    del t, v
    gc.collect()
    assert tr.live_bytes() == 1024  # w still holds the storage
    del w
    gc.collect()
    assert tr.live_bytes() == 0


def test_storage_lives_while_only_autograd_holds_it():
    """Catches an early free: the tracker drops its Python storage objects at once, and the only
    reference to exp's result is the autograd graph. The weakref must fire at the real free
    (in backward), not when the Python storage object goes away."""
    w = nn.Parameter(torch.ones(1000))
    with LiveMemoryTracker(known=[w]) as tr:
        tr.phase = "forward"
        loss = (w * 3).exp().sum()  # w*3: temporary, freed; exp saves its 4000 B result
        gc.collect()
        rid = max(range(len(tr.sizes)), key=lambda r: tr.sizes[r] if r in tr._refs else -1)
        assert tr.sizes[rid] == 4000  # the saved exp result is alive...
        forward_live = tr.live_bytes()
        assert forward_live == 4000 + 4  # ...and so is the loss (a 0-d fp32)
        tr.phase = "backward"
        loss.backward()
        gc.collect()
        # left: the loss and w's new gradient; the saved exp result is gone
        assert tr.live_bytes(exclude={tr.record_id(w.grad)}) == 4
    freed = [(sign, phase) for sign, r, phase in tr.events if r == rid and sign < 0]
    assert freed == [(-1, "backward")]


def test_peak_includes_backward_temporaries():
    class BigBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            tmp = torch.zeros(1 << 18)  # 1 MiB temporary, only in backward
            return g * 2 + tmp[: g.numel()].view_as(g)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            return BigBackward.apply(self.lin(x)).sum()

    step = profile_step(M(), (torch.randn(4, 8),))
    assert step.peak_phase == "backward"
    assert step.peak_by_phase["backward"] >= 1 << 20
    assert step.peak_activation_bytes >= (1 << 20) > step.activation_bytes


def test_weight_copies_flagged_inputs_casts_not():
    w = nn.Parameter(torch.ones(8, 8))
    x = torch.ones(4, 8)
    with LiveMemoryTracker(known=[w, x], weights=[w]) as tr:
        wc = w.to(torch.bfloat16)
        wtc = w.t().contiguous()  # a copy of a view of a weight
        wcc = wc.float()  # a cast of a weight copy
        xc = x.to(torch.bfloat16)
        y = xc * 2
    assert tr.is_weight_copy(wc.untyped_storage())
    assert tr.is_weight_copy(wtc.untyped_storage())
    assert tr.is_weight_copy(wcc.untyped_storage())
    assert not tr.is_weight_copy(xc.untyped_storage())
    assert not tr.is_weight_copy(y.untyped_storage())
    # parameters and inputs were allocated before: never tracked
    assert tr.record_id(w) is None and tr.record_id(x) is None


def test_autocast_weight_casts_are_seen():
    lin = nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with LiveMemoryTracker(known=[*lin.parameters(), x], weights=list(lin.parameters())) as tr, \
            torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
        # autocast keeps its bf16 casts of W and b (leaves that need grad) for the region: both are
        # weight copies; the bf16 cast of x and the output y are not
        assert len(tr.weight_copy_ids) == 2
        assert not tr.is_weight_copy(y.untyped_storage())
    assert len(tr.sizes) == 4  # W copy, b copy, x copy, y


def test_fake_tensors_track_the_same_sizes():
    def ops():
        a = torch.ones(3, 5)
        b = a @ a.t()
        return b.softmax(-1).sum()

    with LiveMemoryTracker() as real:
        ops()
    with FakeTensorMode(), LiveMemoryTracker() as fake:
        ops()
    assert fake.sizes == real.sizes and real.peak().bytes == fake.peak().bytes > 0
