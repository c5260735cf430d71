"""Training steps run without a KV cache, on every backend, and fake tensors still drop the causal mask."""

from __future__ import annotations

import pytest

from membench import profile
from membench.backbones import FAMILIES
from membench.backbones.tiny import tiny

H, B, S, LAYERS = 768, 2, 128, 4


def test_the_cache_is_off_by_default_and_its_cost_shows_when_on():
    """opt-125m, 4 layers, b2 s128 fp32: with the cache on, every layer's K and V (b x s x h x 4 bytes
    each) stay alive through backward; off (the default), they do not. Same on fake tensors."""
    kw = dict(batch_size=B, seq_len=S, dtype="fp32", overrides={"num_hidden_layers": LAYERS})
    for device, target in (("cpu", None), ("fake", "cpu")):
        off = profile("opt-125m", "full", device=device, target=target, **kw)
        on = profile("opt-125m", "full", device=device, target=target,
                     **{**kw, "overrides": {**kw["overrides"], "use_cache": True}})
        assert off.provenance["use_cache"] is False and on.provenance["use_cache"] is True
        assert on.peak_activation_bytes - off.peak_activation_bytes == LAYERS * 2 * B * S * H * 4 == 6_291_456
        assert on.layer_bytes == off.layer_bytes  # the cache holds, it does not save


@pytest.mark.parametrize("family", [f for f, fam in FAMILIES.items() if fam.language_model])  # a KV cache
def test_fake_equals_cpu_without_the_cache(family):
    """Without a cache transformers checks the position ids for packing before it drops the causal mask;
    fake tensors cannot answer, so the runner hands them a cache that stores nothing (equal to the byte)."""
    model, ov = tiny(family, layers=2, hidden=64, heads=2)
    kw = dict(batch_size=2, seq_len=32, dtype="bf16", overrides=ov)
    cpu = profile(model, "full", device="cpu", **kw)
    fake = profile(model, "full", device="fake", target="cpu", **kw)
    assert fake.layer_bytes == cpu.layer_bytes and fake.peak_activation_bytes == cpu.peak_activation_bytes


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cuda_target_runs_flash_without_the_cache(family):
    """No causal mask reaches SDPA, so an A100 in bf16 runs flash (a dense mask would force the
    memory-efficient kernel)."""
    model, ov = tiny(family, layers=2, hidden=64, heads=2)
    r = profile(model, "full", batch_size=2, seq_len=32, dtype="bf16", device="fake", overrides=ov)
    assert r.predicted_cuda["sdpa_backends"] == {"flash": 2}
