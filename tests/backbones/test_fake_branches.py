"""Branches on tensor values (mask shortcuts, LayerDrop draws) taken on fake tensors as the real run takes them."""

from __future__ import annotations

import pytest

from membench import profile
from membench.backbones import FAMILIES
from membench.backbones.fake_branches import as_in_a_real_run
from membench.backbones.tiny import tiny_overrides

NO_DROPOUT = FAMILIES["opt"].dropout_overrides()  # only LayerDrop draws from the generator


def _opt(device, layerdrop, seed=0):
    ov = tiny_overrides("opt", layers=6) | NO_DROPOUT | {"layerdrop": layerdrop}
    return profile("opt-125m", "full", batch_size=2, seq_len=16, device=device, target="cpu", overrides=ov,
                   seed=seed)


def test_layerdrop_on_fake_tensors_drops_the_layers_the_real_run_drops():
    real, fake = _opt("cpu", 0.5), _opt("fake", 0.5)
    dropped = [row.name for row in real.layers if row.name.startswith("layers.") and row.activation_bytes == 0]
    assert 0 < len(dropped) < 6, "the seed should drop some layers, not none or all (else the check is vacuous)"
    assert [(r.name, r.activation_bytes) for r in fake.layers] == [(r.name, r.activation_bytes) for r in real.layers]
    assert fake.peak_activation_bytes == real.peak_activation_bytes


@pytest.mark.parametrize("seed", [1, 2])
def test_layerdrop_draws_follow_the_seed(seed):
    assert [r.activation_bytes for r in _opt("fake", 0.5, seed).layers] == \
        [r.activation_bytes for r in _opt("cpu", 0.5, seed).layers]


def test_the_shortcuts_are_transformers_own_again_afterwards():
    from transformers import masking_utils

    names = ("_ignore_causal_mask_sdpa", "_ignore_bidirectional_mask_sdpa", "find_packed_sequence_indices")
    before = {n: getattr(masking_utils, n) for n in names if hasattr(masking_utils, n)}
    assert before, "transformers no longer has these checks: membench.backbones.fake_branches needs a look"
    with as_in_a_real_run():
        assert all(getattr(masking_utils, n) is not f for n, f in before.items())
    assert all(getattr(masking_utils, n) is f for n, f in before.items())


def test_a_finite_check_on_fake_tensors_is_answered_as_a_healthy_run():
    """BART's fp16 layers clamp unless `torch.isfinite(h).all()`: fake tensors cannot answer it alone."""
    ov = tiny_overrides("bart")
    real = profile("bart-base", "lora", batch_size=2, seq_len=16, dtype="fp16", device="cpu", overrides=ov)
    fake = profile("bart-base", "lora", batch_size=2, seq_len=16, dtype="fp16", device="fake", target="cpu",
                   overrides=ov)
    assert [r.activation_bytes for r in fake.layers] == [r.activation_bytes for r in real.layers]
    assert fake.peak_activation_bytes == real.peak_activation_bytes
    assert profile("bart-base", "lora", batch_size=2, seq_len=16, dtype="fp16", device="fake", target="cuda",
                   overrides=ov).predicted_cuda["max_allocated_bytes"] > 0
