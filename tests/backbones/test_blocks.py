"""Every family's split of a layer is the layer: layer(h) == ffn_block(layer, attention_block(layer, h, ...)).

MEFT builds F and G from these blocks, so a block that drifted from transformers' own layer
(an op, an order, a dropout call) would change what is fine-tuned. Checked in float64 with
dropout on: the same seed gives the same masks only if the blocks draw them in the layer's order.
The blocks route their residual inputs (`membench.backbones.residual`); inside a residual sink
the layer's value is unchanged and x's gradient is split between the sink and x."""

from __future__ import annotations

import pytest
import torch

from membench.backbones import FAMILIES
from membench.backbones.residual import residual_sink
from membench.backbones.tiny import FAMILY_MODELS, tiny_overrides
from membench.runner import build
from membench.spec import RunSpec


def _first_layer_calls(family: str):
    """(family object, [(layer, args, kwargs)] for the first layer of each stack), fp64, dropout on."""
    ov = tiny_overrides(family, layers=2, hidden=16)
    ov.update(FAMILIES[family].dropout_overrides(0.2))
    torch.manual_seed(0)
    built = build(RunSpec(model=FAMILY_MODELS[family], dtype="fp64", device="cpu", overrides=ov), inputs=False)
    model, fam, config = built.model, built.family, built.config
    model.config.use_cache = False
    model.train()
    calls, hooks = [], []
    for layers in fam.stacks(model).values():
        layer = layers[0]

        def capture(mod, args, kwargs, _calls=calls):
            _calls.append((mod, args, dict(kwargs)))

        hooks.append(layer.register_forward_pre_hook(capture, with_kwargs=True))
    data = fam.make_batch(config, 2, 8, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(**data)
    for h in hooks:
        h.remove()
    return fam, calls


def _blocks(fam, layer, args, kwargs):
    hidden, rest = args[0], args[1:]
    return fam.ffn_block(layer, fam.attention_block(layer, hidden, *rest, **kwargs))


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_blocks_equal_the_layer_with_the_same_dropout_masks(family):
    fam, calls = _first_layer_calls(family)
    assert calls
    for layer, args, kwargs in calls:
        torch.manual_seed(1)
        with torch.no_grad():
            ref = layer(*args, **kwargs)
        ref = ref[0] if isinstance(ref, tuple) else ref
        torch.manual_seed(1)
        with torch.no_grad():
            got = _blocks(fam, layer, args, kwargs)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
        torch.manual_seed(2)  # a different seed draws other masks: the comparison above is not vacuous
        with torch.no_grad():
            other = _blocks(fam, layer, args, kwargs)
        assert not torch.allclose(other, ref)


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_a_residual_sink_takes_the_residual_gradient_and_changes_nothing_else(family):
    """With the block input's residual gradient sent to a sink, sink + x's own gradient is x's
    whole gradient, and the block's output is the same."""
    fam, calls = _first_layer_calls(family)
    layer, args, kwargs = calls[0]
    x = args[0].detach().requires_grad_()
    dy = torch.randn_like(x)
    torch.manual_seed(1)
    ref = _blocks(fam, layer, (x, *args[1:]), kwargs)
    (whole,) = torch.autograd.grad(ref, x, dy)
    sunk = []
    torch.manual_seed(1)
    with residual_sink(x, sunk.append):
        out = _blocks(fam, layer, (x, *args[1:]), kwargs)
    (rest,) = torch.autograd.grad(out, x, dy)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert len(sunk) == 1  # the attention block's residual (the FFN block reads the attention output)
    torch.testing.assert_close(rest + sum(sunk), whole, rtol=1e-12, atol=1e-12)
