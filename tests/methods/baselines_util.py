"""Helpers for the baseline-method tests: tiny CPU models built exactly as the runner builds them."""

from __future__ import annotations

import torch

from membench import methods
from membench.backbones import FAMILIES as REGISTRY
from membench.backbones.tiny import FAMILY_MODELS, tiny_overrides
from membench.runner import build
from membench.spec import MethodSpec, RunSpec

FAMILIES = sorted(FAMILY_MODELS)
# Every registered method (so a new one is tested without editing a list), except
# - modifiers (`ckpt`, `chunkloss`): names() leaves them out; the tests combine methods with `+ckpt` themselves;
# - the reversible ones (Method.reversible: the MEFT variants): tests/methods/meft/ checks their gradients
#   against plain autograd, every family and variant.
METHODS = sorted(n for n in methods.names() if not methods.get(n).reversible)


def applies(family: str, method: str) -> bool:
    """Whether the method reads the family's inputs (Method.modalities: prefix tuning refuses image models)."""
    return REGISTRY[family].modality in methods.get(MethodSpec.parse(method).base).modalities


def overrides(family: str, method: str, layers: int = 2) -> dict:
    ov = tiny_overrides(family, layers=layers)
    if MethodSpec.parse(method).base == "bitfit":  # a family without biases by default gets them (Llama)
        ov.update(dict.fromkeys(REGISTRY[family].bias_switches, True))
    return ov


def build_cpu(family: str, method: str, *, seed: int = 0, layers: int = 2, options: dict | None = None,
              base_method: str | None = None, batch_size: int = 2, seq_len: int = 8):
    """(trainable model, batch, family) on CPU; the base weights depend only on `seed` and the overrides."""
    ov = overrides(family, base_method or method, layers)
    torch.manual_seed(seed)
    built = build(RunSpec(model=FAMILY_MODELS[family], method=method, device="cpu", overrides=ov,
                          method_options=options or {}), inputs=False)
    model, fam, config = built.model, built.family, built.config
    batch = fam.make_batch(config, batch_size, seq_len, torch.Generator().manual_seed(seed))
    return model, batch, fam


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def gradient_problems(model) -> list[str]:
    """What is wrong with the gradients after a backward: trainable without a finite non-zero one, frozen with one."""
    bad = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            if p.grad is None:
                bad.append(f"{name}: trainable, no gradient")
            elif not torch.isfinite(p.grad).all():
                bad.append(f"{name}: non-finite gradient")
            elif not p.grad.abs().sum() > 0:
                bad.append(f"{name}: zero gradient")
        elif p.grad is not None:
            bad.append(f"{name}: frozen, has a gradient")
    return bad


def two_steps(model, batch, seed: int = 0):
    """Forward/backward, AdamW step, forward/backward again; returns {name: grad} of the second backward.

    Two steps because zero-initialised factors (LoRA's B, an adapter's W_up) make their partner's
    gradient exactly zero at the very first step, by construction; after one update every
    trainable parameter must get a non-zero gradient.
    """
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    torch.manual_seed(seed)
    model(**batch).loss.backward()
    first = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.manual_seed(seed + 1)
    model(**batch).loss.backward()
    return first, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def one_thread():
    """Generator for a module fixture: tiny models run 10-40x faster on one thread when the CPUs are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
