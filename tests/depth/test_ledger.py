"""Saved-tensor charges at any depth (membench/depth/ledger.py), on hand-made charges: layer numbers in forward and
backward order, parts outside the layers, and what does not extrapolate."""

from __future__ import annotations

import pytest

from membench.depth.ledger import Layers, affine, fit_charges
from membench.depth.trace import NotAligned

LAYERS = Layers({"layers": "model.layers"})


def charges(depth: int, *, recompute: bool = True, odd: int | None = None) -> list[tuple]:
    """A model's charges: embeddings, each layer's two saves in forward, the head, then (recompute) each layer's
    one save in backward order; `odd`: that layer saves one byte more."""
    out = [("model.embed", "embeddings", "forward", 64)]
    for i in range(depth):
        extra = 1 if i == odd else 0
        out += [(f"model.layers.{i}.attn", f"layers.{i}", "forward", 32 + extra),
                (f"model.layers.{i}.mlp", f"layers.{i}", "forward", 128)]
    out.append(("lm_head", "head", "forward", 256))
    if recompute:
        out += [(f"model.layers.{i}", f"layers.{i}", "recompute", 16) for i in reversed(range(depth))]
    return out


def test_forward_and_backward_orders_extrapolate():
    model = fit_charges({d: charges(d) for d in range(2, 7)}, LAYERS)
    for n in (2, 7, 40):
        assert model.charges(n) == charges(n)


def test_a_layer_that_differs_is_refused():
    # layer 3 saves one byte more wherever it exists: depth 6's rebuild (unseen) shows it
    with pytest.raises(NotAligned):
        fit_charges({d: charges(d, odd=3) for d in range(2, 7)}, LAYERS)


def test_names_outside_a_stack_stay():
    assert LAYERS.token(("lm_head", "head", "forward", 1)) == (("O", "lm_head", "head", "forward", 1), None)
    tok, index = LAYERS.token(("model.layers.12.mlp.fc1", "layers.12", "forward", 8))
    assert (tok, index) == (("L", "layers", ".mlp.fc1", "forward", 8), 12)
    assert LAYERS.charge(tok, 3) == ("model.layers.3.mlp.fc1", "layers.3", "forward", 8)


def test_affine_figures():
    assert affine({2: 10, 3: 15, 4: 20, 5: 25, 6: 30}, "bytes")(80) == 10 + 78 * 5
    with pytest.raises(NotAligned, match="bytes does not grow"):
        affine({2: 10, 3: 15, 4: 20, 5: 25, 6: 31}, "bytes")
