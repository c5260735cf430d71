"""A profiled step as a RunResult: its rows, its provenance, the backend's figures."""

from __future__ import annotations

import json

from .. import dtypes
from ..backends import Backend, describe
from ..result import LayerRow, RunResult
from ..spec import RunSpec


def to_result(step, order: list[str] | None, spec: RunSpec, backend: Backend, *, plan=None, wall_s: float,
              extra: dict | None = None, input_shape=()) -> RunResult:
    """The RunResult of `step` (membench.profilers.step) run as `spec` describes on `backend`.

    `order`: the report's rows (named rows stay, at 0 B); `plan`: the StepPlan it ran with (None: the
    caller's own optimizer, no emulation: the device's own figures); `extra`: provenance entries
    (`config`: the transformers config as a dict)."""
    from ..provenance import provenance

    by_group = step.ledger.by_group
    names = list(order or [])
    names += [g for g in by_group if g not in names]
    keep = [g for g in names if g in by_group or g not in ("head", "outside")]  # (named rows stay at 0 B)
    rows = [LayerRow(name=g, activation_bytes=by_group.get(g, {}).get("forward", 0),
                     recompute_bytes=by_group.get(g, {}).get("recompute", 0)) for g in keep]
    modules = [{"name": m, "activation_bytes": v.get("forward", 0), "recompute_bytes": v.get("recompute", 0)}
               for m, v in step.ledger.by_module.items()]
    extra = dict(extra or {})
    prov = provenance(backend.device)
    # JSON-normal form (int dict keys -> str, dtypes -> str), so a result equals its JSON round trip
    prov["config"] = json.loads(json.dumps(extra.pop("config", {}), default=str))
    prov.update({k: v for k, v in extra.items() if v is not None})
    prov["target"] = describe(backend.device, backend.target.kind, backend.target.gpu_name, form="record")
    if "use_cache" in prov["config"]:
        prov["use_cache"] = bool(prov["config"]["use_cache"])  # training steps run without a KV cache by default
    target = backend.target
    return RunResult(
        model=spec.model, method=spec.method, batch_size=spec.batch_size, seq_len=spec.seq_len,
        dtype=dtypes.short(spec.dtype), device=backend.device, activation_bytes=step.activation_bytes,
        peak_activation_bytes=step.peak_activation_bytes, param_bytes=step.param_bytes,
        trainable_param_bytes=step.trainable_param_bytes, grad_bytes=step.grad_bytes,
        optimizer_bytes=step.optimizer_bytes, layers=rows, provenance=prov, recompute_bytes=step.recompute_bytes,
        estimated_peak_bytes=step.estimated_peak_bytes, buffer_bytes=step.buffer_bytes, input_bytes=step.input_bytes,
        weight_copy_bytes=step.ledger.weight_copy_bytes, num_params=step.num_params,
        num_trainable_params=step.num_trainable_params, peak_phase=step.peak_phase,
        peak_by_phase=step.peak_by_phase, attn=spec.attn, overrides=dict(spec.overrides),
        method_options=spec.method_options, modules=modules, cuda=step.cuda, nvml=step.nvml, loss=step.loss,
        wall_s=round(wall_s, 3), target=target.kind, gpu=target.gpu_name,
        predicted_cuda=backend.predicted_cuda(step) if plan is not None else None,
        optimizer=plan.optimizer_name if plan is not None else step.optimizer_name, loss_kind=step.loss_kind,
        input_shape=list(input_shape), grad_accum=spec.grad_accum, precision=spec.training_precision.name,
        quant=spec.quantized.label if spec.quant else "",
    )
