"""Prefix tuning's positions: encoders get them at their embeddings, so position ids never reach the model.

Pins the cause of a fake-tensor break seen with transformers 5.25: position ids handed to an
encoder's forward reach its mask builder, whose packed-sequence check cannot read fake tensors and
builds a [b, 1, s, s] mask that ignores the prefix (SDPA then fails: 64 queries over 84 keys).
"""

from __future__ import annotations

import pytest
import torch

from membench import profile
from membench.backbones import FAMILIES
from membench.backbones.tiny import FAMILY_MODELS

from .baselines_util import build_cpu

ENCODERS = [f for f, fam in FAMILIES.items() if fam.modality == "text" and not fam.language_model]


def _position_ids_seen(model, family_name):
    """(position_ids the encoder's forward got, the ids its position embedding looked up) in one forward."""
    inner = model.get_base_model()
    encoder = getattr(inner, inner.base_model_prefix)
    seen = {}
    encoder.register_forward_pre_hook(
        lambda m, a, kw: seen.__setitem__("forward", kw.get("position_ids")), with_kwargs=True)
    encoder.embeddings.position_embeddings.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("looked_up", a[0].clone()))
    return seen


@pytest.mark.parametrize("family_name", ENCODERS)
def test_encoder_prefix_keeps_the_models_own_positions_without_position_ids(family_name):
    prefixed, batch, _ = build_cpu(family_name, "prefix", options={"num_virtual_tokens": 5}, seq_len=8)
    plain, _, _ = build_cpu(family_name, "lora")  # any method without a cache: the model's own positions
    seen = _position_ids_seen(prefixed, family_name)
    prefixed(**batch)
    inner = plain.get_base_model()
    own = {}
    getattr(inner, inner.base_model_prefix).embeddings.position_embeddings.register_forward_pre_hook(
        lambda m, a: own.__setitem__("looked_up", a[0].clone()))
    plain(**batch)
    assert seen["forward"] is None  # nothing for the mask builder's packed-sequence check to read
    assert torch.equal(seen["looked_up"].expand_as(own["looked_up"]), own["looked_up"])


@pytest.mark.parametrize("family_name", ENCODERS)
def test_encoder_prefix_without_keep_positions_shifts_by_the_prefix(family_name):
    prefixed, batch, _ = build_cpu(family_name, "prefix", options={"num_virtual_tokens": 5,
                                                                    "keep_positions": False})
    kept, _, _ = build_cpu(family_name, "prefix", options={"num_virtual_tokens": 5})
    shifted, own = _position_ids_seen(prefixed, family_name), _position_ids_seen(kept, family_name)
    prefixed(**batch)
    kept(**batch)
    assert torch.equal(shifted["looked_up"], own["looked_up"] + 5)


@pytest.mark.parametrize("family_name", ENCODERS)
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_encoder_prefix_runs_on_fake_tensors_without_a_mask(family_name, target):
    from membench.backbones.tiny import tiny_overrides

    r = profile(FAMILY_MODELS[family_name], "prefix", batch_size=2, seq_len=16, device="fake", target=target,
                overrides=tiny_overrides(family_name), method_options={"num_virtual_tokens": 4})
    assert r.activation_bytes > 0
    if target == "cuda":  # unmasked attention over 4 + 16 keys: the kernel a real run picks (no mask)
        assert r.predicted_cuda["sdpa_backends"] == {"efficient": 2}
