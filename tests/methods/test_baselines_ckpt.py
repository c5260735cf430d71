"""Gradient checkpointing through the profilers, every family (fake backend, tiny 3-layer models).

- forward: each checkpointed layer keeps only its input hidden state (b*s*h*4 bytes in fp32);
- backward: the recompute phase shows each layer's recomputed bytes, and (input + recompute)
  equals what the layer saves without checkpointing;
- peak: the live tracker charges the recompute (the peak is in backward, above anything the
  forward alone could explain).
"""

from __future__ import annotations

import pytest

from membench import profile
from membench.backbones.tiny import FAMILY_MODELS, text_seq

from . import baselines_util
from .baselines_util import FAMILIES, overrides

_one_thread = pytest.fixture(autouse=True, scope="module")(baselines_util.one_thread)


B, S, H, LAYERS = 2, 16, 32, 3


def run(family, method, target="cpu"):
    return profile(FAMILY_MODELS[family], method, batch_size=B, seq_len=text_seq(family, S), device="fake",
                   target=target,
                   overrides=overrides(family, method, layers=LAYERS))


def stack_rows(result):
    return [r for r in result.layers if r.name not in ("embeddings", "head", "outside")]


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_checkpointed_layers_keep_their_inputs_and_recompute_the_rest(family, method):
    plain, ckpt = run(family, method), run(family, method + "+ckpt")
    S = plain.seq_len  # noqa: N806 - image models: the patches + 1
    hidden = B * S * H * 4
    rows, ref = stack_rows(ckpt), {r.name: r for r in stack_rows(plain)}
    assert len(rows) == LAYERS * (2 if family == "bart" else 1)
    for row in rows:
        first = row.name.endswith(".0")
        # the first layer of a stack may also keep inputs no earlier layer kept (encoder output, a mask)
        if first:
            assert hidden <= row.activation_bytes <= 2 * hidden + B * S * S * 4, row
        else:
            assert row.activation_bytes == hidden, row
        assert row.recompute_bytes > 0.5 * ref[row.name].activation_bytes, row
        if not first and row.name != rows[-1].name and not row.name.endswith(f".{LAYERS - 1}"):
            # a middle layer: nothing shared with other layers, so the books balance to the byte
            assert row.activation_bytes + row.recompute_bytes == ref[row.name].activation_bytes, row
    assert plain.recompute_bytes == 0
    assert ckpt.recompute_bytes == sum(r.recompute_bytes for r in ckpt.layers)
    assert ckpt.activation_bytes < plain.activation_bytes
    # nothing recomputed lands outside the layers (the layer body runs as the layer's child module)
    assert all(r.recompute_bytes == 0 for r in ckpt.layers if r.name in ("embeddings", "head", "outside"))


@pytest.mark.parametrize("family", ["bert", "opt", "llama"])
def test_peak_is_charged_for_the_recompute(family):
    ckpt = run(family, "full+ckpt")
    rows = stack_rows(ckpt)
    # while layer i is recomputed, the inputs of layers 0..i are still kept and its recompute is live
    bound = max(sum(r.activation_bytes for r in rows[: i + 1]) + rows[i].recompute_bytes for i in range(len(rows)))
    assert ckpt.peak_by_phase["backward"] >= bound
    assert ckpt.peak_activation_bytes >= bound
    if family == "bert":  # tiny head: the recompute, not the logits, makes the peak
        assert ckpt.peak_phase == "backward"
        assert ckpt.peak_by_phase["backward"] > ckpt.peak_by_phase["forward"]


def test_adapters_and_prefix_are_recomputed_in_their_layer():
    for method in ("houlsby", "prefix"):
        res = run("opt", method + "+ckpt")
        mods = {m["name"]: m for m in res.modules}
        if method == "houlsby":
            ad = [m for n, m in mods.items() if "houlsby_" in n]
            assert ad and all(m["recompute_bytes"] > 0 and m["activation_bytes"] == 0 for m in ad)
        body = [m for n, m in mods.items() if n.endswith(".checkpointed")]
        assert len(body) == LAYERS and all(m["recompute_bytes"] > 0 for m in body)


def test_fake_matches_cpu_with_checkpointing():
    for family in ("opt", "llama"):
        ov = overrides(family, "full", layers=2)
        fake = profile(FAMILY_MODELS[family], "prefix+ckpt", batch_size=B, seq_len=S, device="fake", target="cpu",
                       overrides=ov)
        cpu = profile(FAMILY_MODELS[family], "prefix+ckpt", batch_size=B, seq_len=S, device="cpu", overrides=ov)
        assert [(r.activation_bytes, r.recompute_bytes) for r in fake.layers] == \
               [(r.activation_bytes, r.recompute_bytes) for r in cpu.layers]


@pytest.mark.parametrize("family", ["bert", "opt"])
def test_fake_equals_cpu_for_every_baseline_bf16(family):
    """The fake backend predicts the CPU run to the byte: per layer (forward and recompute) and the peak."""
    for method in ("houlsby", "pfeiffer", "prefix", "ia3", "bitfit", "houlsby+ckpt"):
        kw = dict(batch_size=2, seq_len=12, dtype="bf16", overrides=overrides(family, method))
        fake = profile(FAMILY_MODELS[family], method, device="fake", target="cpu", **kw)
        cpu = profile(FAMILY_MODELS[family], method, device="cpu", **kw)
        assert [(r.name, r.activation_bytes, r.recompute_bytes) for r in fake.layers] == \
               [(r.name, r.activation_bytes, r.recompute_bytes) for r in cpu.layers], method
        assert fake.peak_activation_bytes == cpu.peak_activation_bytes, method
