"""The fake backend must predict the cpu backend's saved bytes exactly, layer by layer.

And LoRA must save what the theory says: fewer bytes than full fine-tuning in
adapted layers (the frozen Linears' inputs disappear) and almost nothing below
the first adapted layer (nothing there needs a gradient).
"""

from __future__ import annotations

import itertools

import pytest

from membench import profile
from membench.backbones.tiny import tiny

CASES = list(itertools.product(("bert", "opt"), ("fp32", "bf16"), ("eager", "sdpa"), ("full", "lora")))


@pytest.mark.parametrize(("family", "dtype", "attn", "method"), CASES, ids=["-".join(c) for c in CASES])
def test_fake_equals_cpu_per_layer(family, dtype, attn, method):
    model, ov = tiny(family)
    kw = dict(batch_size=2, seq_len=12, dtype=dtype, attn=attn, overrides=ov)
    fake = profile(model, method, device="fake", target="cpu", **kw)
    cpu = profile(model, method, device="cpu", **kw)
    assert [r.name for r in fake.layers] == [r.name for r in cpu.layers]
    assert fake.layer_bytes == cpu.layer_bytes
    assert fake.activation_bytes == cpu.activation_bytes > 0
    # the breakdown does not depend on the backend either
    for key in ("param_bytes", "trainable_param_bytes", "grad_bytes", "optimizer_bytes", "input_bytes",
                "weight_copy_bytes"):
        assert getattr(fake, key) == getattr(cpu, key), key
    # every layer of the stack saves something in both methods (LoRA adapts every layer by default)
    assert all(v > 0 for k, v in cpu.layer_bytes.items() if k.startswith("layers."))


@pytest.mark.parametrize("family", ["bert", "opt"])
def test_lora_saves_less_than_full_in_adapted_layers(family):
    model, ov = tiny(family, layers=2)
    kw = dict(batch_size=2, seq_len=16, device="fake", overrides=ov)
    full = profile(model, "full", **kw).layer_bytes
    lora = profile(model, "lora", **kw).layer_bytes
    for name in ("layers.0", "layers.1"):
        assert 0 < lora[name] < full[name], (name, lora[name], full[name])
    # freezing removes saved inputs of frozen Linears only: the attention core etc. stay, so
    # LoRA keeps most of full fine-tuning's activations (the reason MEFT exists)
    assert lora["layers.1"] > 0.5 * full["layers.1"]
    # with the embeddings frozen, their LayerNorm/dropout (BERT) need not save anything
    assert lora["embeddings"] == 0 <= full["embeddings"]


def test_lora_on_top_layer_only_saves_almost_nothing_below():
    model, ov = tiny("opt", layers=3)
    kw = dict(batch_size=2, seq_len=16, device="fake", overrides=ov)
    full = profile(model, "full", **kw).layer_bytes
    top = profile(model, "lora", method_options={"target_modules": ["layers.2.self_attn.q_proj",
                                                                    "layers.2.self_attn.v_proj"]}, **kw)
    assert top.num_trainable_params == 2 * 2 * 8 * 32  # q and v: A (8x32) and B (32x8)
    lb = top.layer_bytes
    # nothing below the first adapted layer needs a gradient: autograd saves nothing there
    assert lb["embeddings"] == lb["layers.0"] == lb["layers.1"] == 0
    assert 0 < lb["layers.2"] < full["layers.2"]
    assert full["layers.0"] > 0
