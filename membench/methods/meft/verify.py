"""Numerical check of a MEFT model: one step reversible vs plain autograd, and the starting point.

`verify_numbers(...)` returns plain data (dicts, lists, floats) so a report or a
results database can store and plot it; `membench verify` prints it.

Per reversible layer:
- recon_error: relative error of the reconstructed layer input (max over the two
  streams) against the input the plain-autograd run computed in forward;
- grad_error: relative error of the layer's adapter gradients against plain autograd.
Per adapted layer, start_gap: relative distance between the input the PLM layer
sees in the MEFT model at initialisation (eval mode) and the input the same layer
sees in the unmodified pre-trained model.
"""

from __future__ import annotations

import math
from typing import Any


def rel_error(a, b) -> float:

    a, b = a.detach().double(), b.detach().double()
    num, den = (a - b).norm().item(), b.norm().item()
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _cat(tensors):
    import torch

    return torch.cat([t.detach().double().reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _step(model, batch, seed):
    import torch

    from .inject import tracing

    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)
    with tracing(model) as traces:
        out = model(**batch)
        out.loss.backward()
    grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in model.named_parameters() if p.requires_grad}
    return float(out.loss.detach()), grads, traces


def starting_point(model, batch) -> dict[str, Any]:
    """Per adapted layer: how far the input the PLM layer sees is from the unmodified model's (eval mode)."""
    import torch

    from .inject import pretrained_mode, stacks_of, tracing

    stacks = stacks_of(model)
    was_training = model.training
    model.eval()
    seen: dict[str, dict[int, Any]] = {s.name: {} for s in stacks}
    tops: dict[str, list] = {s.name: [] for s in stacks}
    handles = []
    for s in stacks:
        for i, shim in enumerate(s.shims):
            handles.append(shim.layer.register_forward_pre_hook(
                lambda m, a, kw=None, name=s.name, i=i: seen[name].__setitem__(i, a[0].detach().clone())))
        handles.append(s.shims[-1].register_forward_hook(
            lambda m, a, o, name=s.name: tops[name].append(o.detach().clone())))
    try:
        with torch.no_grad():
            with pretrained_mode(model):
                ref_out = model(**batch)
            ref_top = {k: v[-1] for k, v in tops.items()}
            with tracing(model) as traces:
                out = model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    logits_ref = getattr(ref_out, "logits", None)
    logits = getattr(out, "logits", None)
    return {
        "layers": {s.name: [rel_error(traces[s.name]["plm_in"][i], seen[s.name][i]) for i in range(len(s.shims))]
                   for s in stacks},
        "stack_output_gap": {name: rel_error(tops[name][-1], ref_top[name]) for name in tops},
        "output_gap": rel_error(logits, logits_ref) if logits is not None else None,
    }


def verify_numbers(model: str | None = "bert-base", method: str = "meft1", *, dtype: str = "fp32",
                   overrides: dict | None = None, options: dict | None = None, batch_size: int = 2,
                   seq_len: int = 32, seed: int = 0, threshold: float = 1e-3,
                   pretrained: str | None = None) -> dict[str, Any]:
    """One training step both ways (reversible vs plain autograd, identical weights and dropout masks)."""
    import torch

    from ... import dtypes
    from ...errors import UserError
    from ...runner import build, build_device
    from .inject import plain_autograd, stacks_of

    if not method.startswith("meft") or "+" in method:
        raise UserError(f"verify checks the reversible methods meft1, meft2, meft3; got {method!r}")
    dtype = dtypes.canonical(dtype)
    if dtype not in ("float32", "float64", "bfloat16"):
        raise UserError(f"verify runs on the CPU in fp32, fp64 or bf16; got {dtype!r}")
    torch.manual_seed(seed)
    with build_device("cpu"):
        _base, net, family, config, cfg = build(model, method, dtype=dtype, device="cpu", overrides=overrides,
                                                method_options=options, pretrained=pretrained)
    batch = family.make_batch(config, batch_size, seq_len, torch.Generator().manual_seed(seed))
    net.train()
    stacks = stacks_of(net)
    loss_rev, g_rev, t_rev = _step(net, batch, seed)
    rng_rev = torch.get_rng_state()
    with plain_autograd(net):
        loss_plain, g_plain, t_plain = _step(net, batch, seed)
    rng_plain = torch.get_rng_state()
    start = starting_point(net, batch)

    names = {id(p): n for n, p in net.named_parameters()}
    layers, worst = [], 0.0
    shim_params: set[str] = set()
    for s in stacks:
        recon = t_rev[s.name].get("recon", {})
        truth = t_plain[s.name].get("inputs", {})
        for i, _shim in enumerate(s.shims):
            pnames = [names[id(p)] for p in s.couplings[i].params()]
            shim_params.update(pnames)
            gerr = rel_error(_cat([g_rev[n] for n in pnames]), _cat([g_plain[n] for n in pnames]))
            rerr = None
            if i in recon and i in truth:
                rerr = max(rel_error(recon[i][0], truth[i][0]), rel_error(recon[i][1], truth[i][1]))
            worst = max(worst, gerr)
            layers.append({"stack": s.name, "layer": i + s.opts.frozen_bottom, "name": f"{s.name}.{i + s.opts.frozen_bottom}",
                           "reversible": i < s.n_reversible, "recon_error": rerr, "grad_error": gerr,
                           "start_gap": start["layers"][s.name][i]})
    other = [n for n in g_rev if n not in shim_params]
    other_err = rel_error(_cat([g_rev[n] for n in other]), _cat([g_plain[n] for n in other])) if other else None
    input_err = {s.name: rel_error(t_rev[s.name]["input_grad"], t_plain[s.name]["input_grad"]) for s in stacks}
    worst = max([worst, *(input_err.values()), other_err or 0.0])
    opts = cfg.to_dict()
    return {
        "model": model or pretrained, "method": method, "dtype": dtypes.short(dtype), "options": opts,
        "overrides": dict(overrides or {}), "batch_size": batch_size, "seq_len": seq_len, "seed": seed,
        "threshold": threshold, "layers": layers, "input_grad_error": input_err, "head_grad_error": other_err,
        "max_grad_error": worst, "passed": bool(worst <= threshold), "loss_reversible": loss_rev,
        "loss_plain": loss_plain, "rng_state_equal": bool(torch.equal(rng_rev, rng_plain)),
        "stack_output_gap": start["stack_output_gap"], "output_gap": start["output_gap"],
    }
