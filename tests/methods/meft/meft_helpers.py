"""Shared helpers for the MEFT tests: tiny models of every family, one step, relative errors."""

from __future__ import annotations

import torch

from membench import methods
from membench.backbones.tiny import FAMILY_MODELS, tiny_overrides
from membench.methods.meft import MeftOptions, plain_autograd, tracing
from membench.runner import build, build_device

FAMILIES = sorted(FAMILY_MODELS)


def is_meft(name: str) -> bool:
    """A MEFT variant: a registered method whose options are `MeftOptions` (every variant is defined so).

    This suite tests every one of them; the baseline tests (tests/methods/baselines_util.py) every other."""
    return issubclass(methods.get(name).Config, MeftOptions)


VARIANTS = tuple(sorted(n for n in methods.names() if is_meft(n)))  # a new variant is tested here as is
PAPER = {"meft1": (0.1, 1.0), "meft2": (1.0, 0.1), "meft3": (0.1, 0.1)}

NODROP = {"bert": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
          "roberta": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
          "bart": dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0),
          "opt": dict(dropout=0.0, attention_dropout=0.0),
          "gpt2": dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
          "llama": dict(attention_dropout=0.0),
          "vit": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)}
# dropout on everywhere a family has it (Llama has none in its layers: adapters' dropout still applies)
DROP = {family: {key: 0.2 for key in keys} for family, keys in NODROP.items()}


def make(family: str, variant: str, layers: int = 2, *, dtype: str = "fp64", dropout: bool = False,
         options: dict | None = None, hidden: int = 16, seed: int = 0, device: str = "cpu"):
    """(model, family object, config) of a tiny `family` model with `variant` applied."""
    ov = tiny_overrides(family, layers=layers, hidden=hidden)
    ov.update(DROP[family] if dropout else NODROP[family])
    opts = {"dropout": 0.2 if dropout else 0.0}
    opts.update(options or {})
    torch.manual_seed(seed)
    with build_device(device):
        _base, model, fam, config, _cfg = build(FAMILY_MODELS[family], variant, dtype=dtype, device=device,
                                                overrides=ov, method_options=opts)
    model.train()
    return model, fam, config


def batch(fam, config, b: int = 2, s: int = 8, seed: int = 0, padded: bool = False) -> dict:
    out = fam.make_batch(config, b, s, torch.Generator().manual_seed(seed))
    if padded and "input_ids" in out:  # (image models have no padding)
        mask = torch.ones(b, s, dtype=torch.long)
        mask[0, :3] = 0  # left-padding of the first sequence (so a causal model's real tokens see it masked)
        out["attention_mask"] = mask
        if out["labels"].dim() == 2:
            out["labels"] = out["labels"].masked_fill(mask == 0, -100)
    return out


def step(model, data: dict, seed: int = 0, trace: bool = True, autocast: torch.dtype | None = None):
    """One forward+backward (forward under CPU autocast when given, backward outside it, as AMP does);
    returns (loss, {param name: grad}, traces or None)."""
    import contextlib

    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)
    amp = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with tracing(model) if trace else contextlib.nullcontext() as traces:
        with amp:
            loss = model(**data).loss
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, traces


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    den = b.norm().item()
    return (a - b).norm().item() / den if den else (a - b).norm().item()


def both_ways(model, data, seed: int = 0, autocast: torch.dtype | None = None):
    """(reversible step, plain-autograd step) on the same weights and seed."""
    rev = step(model, data, seed, autocast=autocast)
    with plain_autograd(model):
        plain = step(model, data, seed, autocast=autocast)
    return rev, plain


def max_errors(rev, plain) -> tuple[float, float]:
    """(max relative error over every trainable parameter's grad, max over the stacks' input grads)."""
    _, g1, t1 = rev
    _, g2, t2 = plain
    assert g1.keys() == g2.keys() and g1
    gerr = max(rel(g1[n], g2[n]) for n in g2)
    ierr = max(rel(t1[k]["input_grad"], t2[k]["input_grad"]) for k in t2)
    return gerr, ierr
