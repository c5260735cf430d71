"""`+chunkloss`: the LM loss a chunk of tokens at a time, against transformers' own loss and in memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from membench import profile
from membench.backbones import FAMILIES
from membench.backbones.tiny import tiny
from membench.errors import UserError
from membench.runner import build
from membench.spec import RunSpec

MiB = 2**20
LM_FAMILIES = [name for name, family in FAMILIES.items() if family.language_model]
SEQ = 13


def _pair(family_name, method="full", dtype="fp64", **options):
    """The plain model and the same weights with +chunkloss, and a batch with ignored tokens."""
    model, ov = tiny(family_name, layers=2)
    ov.update(FAMILIES[family_name].dropout_overrides())
    spec = RunSpec(model=model, method=method, dtype=dtype, device="cpu", overrides=ov)
    plain_built = build(spec, inputs=False)
    plain, family, config = plain_built.model, plain_built.family, plain_built.config
    chunked = build(spec.replace(method=f"{method}+chunkloss", method_options=options), inputs=False).model
    chunked.load_state_dict(plain.state_dict())
    batch = family.make_batch(config, 3, SEQ, torch.Generator().manual_seed(1))
    batch["labels"][0, 4:7] = -100  # padding inside a row
    batch["labels"][2, :] = -100  # a row with every token ignored
    return plain, chunked, family, batch


def _reference_loss(plain, family, batch, dtype=None):
    """transformers' own loss (causal shift with -100 padding, mean over kept tokens), in the logits' dtype."""
    logits = plain(**batch).logits
    labels = batch["labels"]
    if family.task == "causal-lm":
        labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
    logits = logits.to(dtype) if dtype is not None else logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def _grads(model):
    return {n.removeprefix("base_model.model."): p.grad for n, p in model.named_parameters()}


def _err(a: dict, b: dict) -> float:
    top = max(g.abs().max().item() for g in a.values() if g is not None)
    return max((a[n] - b[n]).abs().max().item() for n in a if a[n] is not None) / top


@pytest.mark.parametrize("family_name", LM_FAMILIES)
@pytest.mark.parametrize("chunk", [1, 5, 2 * 3 * SEQ, 10_000])  # odd, divides nothing, one chunk, > the tokens
def test_float64_parity_with_transformers_loss(family_name, chunk):
    plain, chunked, family, batch = _pair(family_name, chunk=chunk)
    ref = _reference_loss(plain, family, batch)
    ref.backward()
    loss = chunked(**batch).loss
    loss.backward()
    assert loss.dtype == torch.float64
    assert abs(loss.item() - ref.item()) <= 1e-12 * abs(ref.item())
    g_ref, g = _grads(plain), _grads(chunked)
    assert set(g_ref) == set(g) and all((g_ref[n] is None) == (g[n] is None) for n in g)
    assert _err(g_ref, g) <= 1e-12  # every weight: the head (tied or not) and, through it, the hidden states


@pytest.mark.parametrize("family_name", ["opt", "bart"])
def test_a_frozen_head_gets_no_gradient(family_name):
    plain, chunked, family, batch = _pair(family_name, method="lora", chunk=7)
    _reference_loss(plain, family, batch).backward()
    chunked(**batch).loss.backward()
    g_ref, g = _grads(plain), _grads(chunked)
    head = [n for n in g if "lm_head" in n or "embed_tokens" in n or "shared" in n]
    assert head and all(g[n] is None for n in head)
    assert _err(g_ref, g) <= 1e-12  # the LoRA weights


def test_bf16_error_is_no_worse_than_plain_bf16():
    """Against an fp64 reference with the same weights, the chunked bf16 loss and gradients err no more
    than transformers' bf16 path does, plus 1e-2."""
    ref, _c, family, batch = _pair("opt", dtype="fp64")
    plain16, chunked16, _f, _b = _pair("opt", dtype="bf16", chunk=5)
    plain16.load_state_dict(ref.state_dict())
    chunked16.load_state_dict(ref.state_dict())
    ref_loss = _reference_loss(ref, family, batch)
    ref_loss.backward()
    plain_loss = plain16(**batch).loss
    plain_loss.backward()
    loss = chunked16(**batch).loss
    loss.backward()
    g_ref = {n: v.double() for n, v in _grads(ref).items()}
    plain_err = _err(g_ref, {n: v.double() for n, v in _grads(plain16).items()})
    err = _err(g_ref, {n: v.double() for n, v in _grads(chunked16).items()})
    assert err <= plain_err + 1e-2
    assert abs(loss.item() - ref_loss.item()) <= abs(plain_loss.item() - ref_loss.item()) + 1e-2


def test_eval_mode_runs_the_original_head():
    _plain, chunked, _family, batch = _pair("opt", chunk=4)
    chunked.eval()
    with torch.no_grad():
        out = chunked(**batch)
    assert out.logits is not None and out.logits.shape[-1] == 1000
    chunked.train()
    assert chunked(**batch).logits is None  # in training the logits never exist


def test_options_and_refusals():
    model, ov = tiny("opt", layers=1)
    r = profile(model, "full+chunkloss", batch_size=2, seq_len=8, device="fake", overrides=ov,
                method_options={"chunk": 3})
    assert r.method_options["chunkloss.chunk"] == 3
    r = profile(model, "lora+chunkloss", batch_size=2, seq_len=8, device="fake", overrides=ov,
                method_options={"chunkloss.chunk": 5, "r": 4})
    assert r.method_options["chunkloss.chunk"] == 5 and r.method_options["r"] == 4
    with pytest.raises(UserError, match="expected a positive number of tokens"):
        profile(model, "full+chunkloss", batch_size=2, seq_len=8, device="fake", overrides=ov,
                method_options={"chunk": 0})
    bert, bov = tiny("bert", layers=1)
    with pytest.raises(UserError, match="replaces a language-model head; bert models here have a classification"):
        profile(bert, "full+chunkloss", batch_size=2, seq_len=8, device="fake", overrides=bov)
    with pytest.raises(UserError, match="given twice"):
        profile(model, "full+chunkloss+chunkloss", batch_size=2, seq_len=8, device="fake", overrides=ov)


@pytest.mark.parametrize("method", ["meft3+chunkloss", "lora+ckpt+chunkloss", "full+ckpt+chunkloss"])
def test_combines_with_other_methods(family_name, method):
    if not FAMILIES[family_name].language_model:
        pytest.skip("classification heads")
    model, ov = tiny(family_name, layers=2)
    plain = profile(model, method.removesuffix("+chunkloss"), batch_size=2, seq_len=16, device="fake", overrides=ov)
    r = profile(model, method, batch_size=2, seq_len=16, device="fake", overrides=ov)
    assert r.layer_bytes["head"] < plain.layer_bytes["head"]


@pytest.mark.slow
def test_opt_1_3b_head_and_peak():
    """opt-1.3b b8 s512 bf16: the head row keeps at most 64 MiB, the peak falls by at least 1.5 GiB."""
    kw = dict(batch_size=8, seq_len=512, dtype="bf16", device="fake")
    full = profile("opt-1.3b", "full", **kw)
    chunked = profile("opt-1.3b", "full+chunkloss", **kw)
    assert chunked.layer_bytes["head"] <= 64 * MiB < full.layer_bytes["head"]
    assert full.peak_activation_bytes - chunked.peak_activation_bytes >= 1.5 * 2**30
    assert {k: v for k, v in chunked.layer_bytes.items() if k.startswith("layers.")} == {
        k: v for k, v in full.layer_bytes.items() if k.startswith("layers.")}  # the stack is untouched
