"""Shared helpers for the MEFT tests: tiny models of every family, one step, relative errors."""

from __future__ import annotations

import torch

from membench import backbones, methods
from membench.backbones.tiny import FAMILY_MODELS, tiny_overrides
from membench.methods.meft import plain_autograd, tracing
from membench.runner import build
from membench.spec import RunSpec

FAMILIES = sorted(FAMILY_MODELS)
TEXT_FAMILIES = sorted(f for f in FAMILIES if backbones.FAMILIES[f].modality == "text")  # batches with padding


# every reversible method (Method.reversible: the MEFT variants), so a new variant is tested here as is;
# the baseline tests (tests/methods/baselines_util.py) test every other method
VARIANTS = tuple(sorted(n for n in methods.names() if methods.get(n).reversible))
PAPER = {"meft1": (0.1, 1.0), "meft2": (1.0, 0.1), "meft3": (0.1, 0.1)}

# make(dropout=True): this dropout everywhere a family has it (Family.dropout_overrides) and in the adapters
# (Llama's layers have only attention dropout: the adapters' still applies)
DROPOUT = 0.2


def rotation(families=None, start: int = 0) -> dict[str, str]:
    """family -> a MEFT variant, the variants taken in turn over `families` (default: every family) in the
    registry's order, from VARIANTS[start]: every variant runs, on a different family each, at the cost of one."""
    names = [f for f in backbones.FAMILIES if families is None or f in families]
    return {f: VARIANTS[(start + i) % len(VARIANTS)] for i, f in enumerate(names)}


def make(family: str, variant: str, layers: int = 2, *, dtype: str = "fp64", dropout: bool = False,
         options: dict | None = None, hidden: int = 16, seed: int = 0, device: str = "cpu"):
    """(model, family object, config) of a tiny `family` model with `variant` applied."""
    ov = tiny_overrides(family, layers=layers, hidden=hidden)
    ov.update(backbones.FAMILIES[family].dropout_overrides(DROPOUT if dropout else 0.0))
    opts = {"dropout": DROPOUT if dropout else 0.0}
    opts.update(options or {})
    torch.manual_seed(seed)
    built = build(RunSpec(model=FAMILY_MODELS[family], method=variant, dtype=dtype, device=device,
                          overrides=ov, method_options=opts), inputs=False)
    model, fam, config = built.model, built.family, built.config
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
