"""Numerical check of a MEFT model: one step reversible vs plain autograd, and the starting point.

Runner-level work (it builds a model as `membench run` does), so it lives beside the runner, not in
the method. `verify_numbers(...)` returns plain data (dicts, lists, floats); `store_verify` stores it
as a run of kind "verify" that `membench report` plots; `membench verify` prints it.

Per reversible layer:
- recon_error: relative error of the reconstructed layer input (max over the two
  streams) against the input the plain-autograd run computed in forward;
- grad_error: relative error of the layer's adapter gradients against plain autograd.
Per adapted layer, start_gap: relative distance between the input the PLM layer
sees in the MEFT model at initialisation (eval mode) and the input the same layer
sees in the unmodified pre-trained model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import dtypes
from .result import model_name
from .spec import RunSpec


def rel_error(a, b) -> float:

    a, b = a.detach().double(), b.detach().double()
    num, den = (a - b).norm().item(), b.norm().item()
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _cat(tensors):
    import torch

    return torch.cat([t.detach().double().reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _step(model, batch, seed, autocast=None):
    """One step; `autocast` (a dtype): the forward under CPU autocast, backward outside it, as AMP runs it."""
    import contextlib

    import torch

    from .methods.meft.inject import tracing

    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)
    with tracing(model) as traces:
        region = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with region:
            out = model(**batch)
        out.loss.backward()
    grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in model.named_parameters() if p.requires_grad}
    return float(out.loss.detach()), grads, traces


def starting_point(model, batch) -> dict[str, Any]:
    """Per adapted layer: how far the input the PLM layer sees is from the unmodified model's (eval mode)."""
    import torch

    from .methods.meft.inject import pretrained_mode, stacks_of, tracing

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


VERIFY_DTYPES = ("fp32", "fp64", "bf16")


def verify_numbers(spec: RunSpec, threshold: float = 1e-3) -> dict[str, Any]:
    """One training step of `spec`'s model (on the CPU) both ways: reversible vs plain autograd, identical
    weights and dropout masks. `spec.model`: a named model, or None with `spec.pretrained` (a checkpoint
    folder): one of the two, as `profile`; its method is a reversible one, without modifiers."""
    import torch

    from . import methods
    from .errors import UserError
    from .methods.meft.inject import plain_autograd, stacks_of
    from .runner import build

    method = spec.method_spec
    if method.modifiers or not methods.get(method.base).reversible:
        reversible = ", ".join(n for n in methods.names() if methods.get(n).reversible)
        raise UserError(f"verify checks the reversible methods {reversible}; got {spec.method!r}")
    spec = spec.replace(device="cpu", target=None, gpu=None).validate()
    if spec.dtype not in VERIFY_DTYPES:
        raise UserError(f"verify runs on the CPU in {', '.join(VERIFY_DTYPES)}; got {spec.dtype!r}")
    torch.manual_seed(spec.seed)
    built = build(spec, inputs=False)
    net, family, config, cfg = built.model, built.family, built.config, built.method_config
    batch_size, seq_len, seed = spec.batch_size, spec.seq_len, spec.seed
    batch = family.make_batch(config, batch_size, seq_len, torch.Generator().manual_seed(seed))
    net.train()
    stacks = stacks_of(net)
    precision = spec.training_precision
    autocast = dtypes.to_torch(precision.autocast) if precision.mixed else None
    loss_rev, g_rev, t_rev = _step(net, batch, seed, autocast)
    rng_rev = torch.get_rng_state()
    with plain_autograd(net):
        loss_plain, g_plain, t_plain = _step(net, batch, seed, autocast)
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
        "model": spec.model or spec.pretrained, "method": spec.method, "dtype": spec.dtype, "options": opts,
        "precision": precision.name, "recommendation": recommend(layers, opts, threshold),
        "overrides": dict(spec.overrides), "batch_size": batch_size, "seq_len": seq_len, "seed": seed,
        "threshold": threshold, "layers": layers, "input_grad_error": input_err, "head_grad_error": other_err,
        "max_grad_error": worst, "passed": bool(worst <= threshold), "loss_reversible": loss_rev,
        "loss_plain": loss_plain, "rng_state_equal": bool(torch.equal(rng_rev, rng_plain)),
        "stack_output_gap": start["stack_output_gap"], "output_gap": start["output_gap"],
    }


def recommend(layers: list[dict], opts: dict, threshold: float) -> str | None:
    """What to change when a reversible layer's gradient is off by more than `threshold`: a checkpoint every K
    layers, where K is how many reversible layers from the top (where the reconstruction starts) stay within
    it; None when every layer passes or checkpoints are already that close."""
    rev = sorted((r for r in layers if r["reversible"]), key=lambda r: -r["layer"])
    if not rev or all(r["grad_error"] <= threshold for r in rev):
        return None
    k = next(i for i, r in enumerate(rev) if r["grad_error"] > threshold)
    every = max(1, k)
    if opts.get("checkpoint_every") and opts["checkpoint_every"] <= every:
        return (f"the error exceeds {threshold:g} within {opts['checkpoint_every']} layers of a checkpoint: "
                "use fp32 (32-true) for this model")
    return (f"the reconstruction error grows past {threshold:g} after {k} reversible layer(s) from the top: "
            f"-o checkpoint_every={every} restarts it from a stored input every {every} layer(s)")


SERIES = (("recon_error", "recon_error"), ("grad_error", "grad_error"), ("start_gap", "start_gap"))


def verify_record(res: dict) -> tuple[dict, dict, dict]:
    """(config, metrics, series) of a `verify_numbers` result, as the results database stores them.

    Series are indexed by layer (depth, 0 = bottom); with several stacks (encoder-decoder models)
    each series name is prefixed by its stack ("decoder.grad_error")."""
    stacks = list(dict.fromkeys(row["stack"] for row in res["layers"]))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in res["layers"]:
        for field, name in SERIES:
            value = row.get(field)
            if value is None:
                continue
            full = name if len(stacks) == 1 else f"{row['stack']}.{name}"
            series.setdefault(full, []).append((int(row["layer"]), float(value)))

    def worst(field):
        vals = [row[field] for row in res["layers"] if row.get(field) is not None]
        return max(vals) if vals else None

    metrics = {"max_grad_error": res["max_grad_error"], "max_recon_error": worst("recon_error"),
               "max_start_gap": worst("start_gap"), "output_gap": res.get("output_gap"),
               "head_grad_error": res.get("head_grad_error"),
               "input_grad_error": max(res["input_grad_error"].values()) if res.get("input_grad_error") else None,
               "passed": float(res["passed"]), "threshold": res["threshold"],
               "loss_reversible": res["loss_reversible"], "loss_plain": res["loss_plain"],
               "rng_state_equal": float(res["rng_state_equal"]),
               "reversible_layers": float(sum(1 for row in res["layers"] if row["reversible"]))}
    metrics = {k: v for k, v in metrics.items() if v is not None}
    model = model_name(None if res.get("pretrained") else res["model"], res.get("pretrained"))
    config = {"kind": "verify", "model": model, "method": res["method"], "batch_size": res["batch_size"],
              "seq_len": res["seq_len"], "dtype": res["dtype"], "device": "cpu",
              "overrides": dict(res.get("overrides") or {}), "method_options": dict(res.get("options") or {}),
              "seed": res["seed"], "threshold": res["threshold"], "pretrained": res.get("pretrained")}
    return config, metrics, series


def store_verify(db: str | Path, res: dict) -> int:
    """Store one `verify_numbers` result as a run of kind "verify"; the same check stored again replaces it."""
    import hashlib

    from . import __version__
    from .provenance import provenance
    from .result import RunRecord
    from .results import store_result

    config, metrics, series = verify_record(res)
    blob = json.dumps({"verify": config, "membench": __version__}, sort_keys=True, default=str)
    key = "verify-" + hashlib.sha256(blob.encode()).hexdigest()[:32]
    record = RunRecord(kind="verify", metrics=metrics, series=series, config=config, provenance=provenance("cpu"))
    return store_result(str(db), record, key=key)
