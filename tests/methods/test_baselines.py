"""Baseline methods (LoRA, Houlsby/Pfeiffer adapters, prefix tuning, (IA)^3, BitFit) on every family, tiny CPU models.

- starting point: exact for LoRA, (IA)^3, BitFit and zero-initialised adapters; the gap of prefix
  tuning and normally initialised adapters is measured and printed (`pytest -s`), and must exist;
- gradients: every trainable parameter gets a finite non-zero gradient, no frozen one gets any,
  with and without gradient checkpointing; checkpointing does not change the gradients.
"""

from __future__ import annotations

import pytest
import torch

from membench import methods
from membench.backbones import FAMILIES as REGISTRY
from membench.errors import UserError

from . import baselines_util
from .baselines_util import FAMILIES, METHODS, applies, build_cpu, gradient_problems, logits, two_steps

_one_thread = pytest.fixture(autouse=True, scope="module")(baselines_util.one_thread)


EXACT = [("lora", {}), ("ia3", {}), ("bitfit", {}), ("houlsby", {"init": "zero"}), ("pfeiffer", {"init": "zero"})]
MOVED = [("prefix", {}), ("houlsby", {"init": "normal"}), ("pfeiffer", {"init": "normal"})]


@pytest.mark.parametrize("family", FAMILIES)
def test_starting_point(family):
    """The base model's output, bit for bit, where the method promises it; the gap elsewhere is reported."""
    base, batch, _ = build_cpu(family, "full", base_method="bitfit")  # Llama: same biases as bitfit's model
    ref = logits(base, batch)
    for method, opts in EXACT:
        model, _, _ = build_cpu(family, method, options=opts)
        out = logits(model, batch)
        if method != "bitfit" and REGISTRY[family].bias_switches:  # bitfit's has biases: compare like with like
            ref_nb = logits(build_cpu(family, "full")[0], batch)
            assert torch.equal(out, ref_nb), f"{family} {method}: starting point moved"
        else:
            assert torch.equal(out, ref), f"{family} {method}: starting point moved"
    plain = logits(build_cpu(family, "full")[0], batch)
    for method, opts in MOVED:
        if not applies(family, method):
            continue
        model, _, _ = build_cpu(family, method, options=opts)
        out = logits(model, batch)
        gap = ((out - plain).abs().max() / plain.abs().max()).item()
        print(f"starting-point gap {family:8} {method:9} {opts}: max|dy|/max|y| = {gap:.3e}")
        assert torch.isfinite(out).all()
        assert gap > 0, f"{family} {method} {opts}: expected the output to move at initialisation"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_with_and_without_checkpointing(family, method):
    if not applies(family, method):
        pytest.skip(f"{method} does not apply to {family}")
    runs = {}
    for spec in (method, method + "+ckpt"):
        model, batch, _ = build_cpu(family, spec, seed=1)
        first, second = two_steps(model, batch)
        frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and n in first]
        assert not frozen_with_grad, f"{spec}: frozen parameters got gradients: {frozen_with_grad[:5]}"
        assert all(torch.isfinite(g).all() for g in first.values()), f"{spec}: non-finite gradient at step 1"
        problems = gradient_problems(model)
        assert not problems, f"{family} {spec}: " + "; ".join(problems[:8])
        runs[spec] = second
    plain, ckpt = runs[method], runs[method + "+ckpt"]
    assert plain.keys() == ckpt.keys()
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, rtol=1e-4, atol=1e-6, msg=f"{family} {method}: {name} differs")


def test_negative_control_reentrant_checkpointing_loses_gradients():
    """The gradient check can fail: reentrant checkpointing with frozen embeddings silently drops the layers'
    gradients (the trainable classifier keeps the loss differentiable, so backward runs without an error)."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    model, batch, fam = build_cpu("bert", "lora", seed=1)
    for layer in fam.stacks(model.get_base_model())["layers"]:
        fwd = layer.forward
        layer.forward = lambda *a, _f=fwd, **k: checkpoint(partial(_f, **k), *a, use_reentrant=True)
    model.train()
    with pytest.warns(UserWarning, match="requires_grad"):
        model(**batch).loss.backward()
    problems = gradient_problems(model)
    assert any("lora_A" in p and "no gradient" in p for p in problems)


@pytest.mark.parametrize("family", ["opt", "bert"])
def test_checkpointing_leaves_eval_and_no_grad_alone(family):
    plain, batch, _ = build_cpu(family, "houlsby", options={"init": "normal"})
    ckpt, _, _ = build_cpu(family, "houlsby+ckpt", options={"init": "normal"})
    assert torch.equal(logits(plain, batch), logits(ckpt, batch))


def test_trainable_parameters_are_the_methods_own():
    d, r, layers = 32, 8, 2
    per_adapter = 2 * d * r + r + d
    head = d * d + d + d * 2 + 2  # RobertaClassificationHead: dense + out_proj (2 labels)
    model, _, _ = build_cpu("roberta", "houlsby", options={"r": r})
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("houlsby_" in n or n.startswith("classifier.") for n in names)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * layers * per_adapter + head
    model, _, _ = build_cpu("opt", "pfeiffer", options={"r": r})
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".pfeiffer_ffn." in n for n in names)  # causal LM: the tied head stays frozen
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == layers * per_adapter
    model, _, _ = build_cpu("gpt2", "bitfit")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(".bias") for n in names)
    assert len(names) == sum(1 for n, _ in model.named_parameters() if n.endswith(".bias"))
    model, _, _ = build_cpu("bert", "ia3")
    assert all("ia3_l" in n or "classifier" in n for n, p in model.named_parameters() if p.requires_grad)
    model, _, _ = build_cpu("llama", "prefix", options={"num_virtual_tokens": 5})
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == ["prompt_encoder.default.embedding.weight"]


def test_bitfit_without_biases_is_a_clear_error():
    with pytest.raises(UserError, match="no bias terms.*attention_bias"):
        build_cpu("llama", "bitfit", base_method="full")


@pytest.mark.parametrize(("spec", "options", "match"), [
    ("houlsby", {"r": 0}, "positive"),
    ("pfeiffer", {"init": "uniform"}, "zero, normal"),
    ("houlsby", {"activation": "nope"}, "activation"),
    ("houlsby", {"dropout": 1.5}, r"\[0, 1\)"),
    ("prefix", {"num_virtual_tokens": 0}, "positive"),
    ("ia3", {"target_modules": ["k_proj"], "feedforward_modules": ["fc2"]}, "must also be in"),
    ("ia3", {"target_modules": ["nothing_like_this"], "feedforward_modules": []}, "ia3 on opt"),
])
def test_bad_options(spec, options, match):
    with pytest.raises(UserError, match=match):
        build_cpu("opt", spec, options=options)


def test_modifier_resolution():
    method, mods = methods.resolve("lora+ckpt")
    assert method.name == "lora" and [m.name for m in mods] == ["ckpt"]
    assert methods.get("ckpt").is_modifier
    assert {"houlsby", "pfeiffer", "prefix", "ia3", "bitfit"} <= set(methods.names())
    with pytest.raises(UserError, match="modifier"):
        methods.resolve("ckpt")
    with pytest.raises(UserError, match="not a modifier"):
        methods.resolve("full+lora")
