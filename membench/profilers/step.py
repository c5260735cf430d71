"""Profile one training step (forward, backward, optimizer step) of any nn.Module.

The profilers stack like this; each knows nothing of methods or backbones:

    LiveMemoryTracker (dispatch mode: every storage, alloc -> free)
      SavedTensorLedger (saved-tensor + module hooks: bytes saved per module)
        [CudaAllocatorStats per phase, NvmlSampler thread]   on CUDA only
          [modes: e.g. membench.gpu's CUDA emulation]         innermost, given by the caller
            forward -> loss.backward() -> optimizer.step()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .cuda import CudaAllocatorStats
from .ledger import FORWARD, RECOMPUTE, LedgerReport, SavedTensorLedger
from .live import LiveMemoryTracker
from .nvml import NvmlSampler


def default_loss(output) -> torch.Tensor:
    """HF outputs carry `.loss`; otherwise sum the first tensor (sum saves nothing)."""
    loss = getattr(output, "loss", None)
    if loss is not None:
        return loss
    if isinstance(output, torch.Tensor):
        return output.sum()
    if isinstance(output, dict):
        output = list(output.values())
    for item in output:
        if isinstance(item, torch.Tensor):
            return item.sum()
    raise TypeError("cannot find a tensor in the model output to build a loss; pass loss_fn")


LOSS_KINDS = {"model": "the model's own loss (output.loss)",
              "sum": "pseudo-loss: the sum of the first output tensor (pass loss_fn for your training loss)",
              "loss_fn": "the loss_fn given"}


def loss_kind(output, loss_fn) -> str:
    """Which loss a step ran: "model", "sum" (default_loss's pseudo-loss) or "loss_fn"."""
    if loss_fn is not default_loss:
        return "loss_fn"
    return "model" if getattr(output, "loss", None) is not None else "sum"


def _storage_sizes(tensors) -> list[int]:
    """Bytes of each distinct storage, in first-seen order."""
    seen, out = set(), []
    for t in tensors:
        st = t.untyped_storage()
        if id(st) not in seen:
            seen.add(id(st))
            out.append(st.nbytes())
    return out


def _unique_bytes(tensors) -> int:
    return sum(_storage_sizes(tensors))


@dataclass
class StepProfile:
    ledger: LedgerReport
    activation_bytes: int
    recompute_bytes: int
    peak_activation_bytes: int
    peak_phase: str
    peak_by_phase: dict[str, int]
    estimated_peak_bytes: int
    param_bytes: int
    trainable_param_bytes: int
    buffer_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    input_bytes: int
    num_params: int
    num_trainable_params: int
    loss: float | None
    cuda: dict = field(default_factory=dict)
    nvml: dict = field(default_factory=dict)
    prestep_bytes: list[int] = field(default_factory=list)  # storages allocated before the step, in order
    live: LiveMemoryTracker | None = None  # its time line: every storage of the step(s), born and freed
    phases: list[str] = field(default_factory=list)  # the phases run, in order
    live_end: int = 0  # the live tracker's event count when the last step ended (later events: teardown)
    optimizer_name: str = ""
    loss_kind: str = ""  # LOSS_KINDS


def profile_step(model: nn.Module, batch: dict[str, Any] | tuple | torch.Tensor, *,
                 loss_fn: Callable[[Any], torch.Tensor] = default_loss,
                 groups: dict[nn.Module, str] | None = None,
                 optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
                 cuda: bool = False, snapshot_path: str | None = None, track_live: bool = True,
                 read_loss: bool = True, modes: Sequence[Any] = (), host_device: str | None = None,
                 host_state: Callable[[torch.optim.Optimizer], Iterable[torch.Tensor]] | None = None,
                 steps: int = 1) -> StepProfile:
    """Run one step of `model` on `batch` under the profilers and return what they measured.

    `modes`: context managers entered innermost around the step; profile_step sets
    their `phase` attribute as the step moves on and their `live` attribute to the
    live tracker, where they have one. `host_device` and `host_state`
    tell the live tracker which storages live in host memory: those on that device
    type, and the optimizer state tensors `host_state(optimizer)` names.

    `steps` > 1 runs more training steps after the first (zero_grad, forward, backward,
    optimizer), seen only by the live tracker, the CUDA statistics and the modes: what a
    training loop holds once the optimizer state exists. Their phases are "forward.2",
    "backward.2", "optimizer.2"... Everything else describes the first step."""
    params = [p for p in model.parameters()]
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameter: nothing to fine-tune")
    opt = (optimizer or (lambda ps: torch.optim.AdamW(ps, lr=1e-4)))(trainable)
    inputs = _flatten_tensors(batch)
    known = params + list(model.buffers()) + inputs

    tracker = (LiveMemoryTracker(known, weights=params + list(model.buffers()), host_device=host_device)
               if track_live else None)
    ledger = SavedTensorLedger(model, groups, inputs=tuple(inputs),
                               is_weight_copy=tracker.is_weight_copy if tracker else None)
    cuda_stats = CudaAllocatorStats(snapshot_path=snapshot_path) if cuda else None
    nvml = NvmlSampler() if cuda else None

    ran: list[str] = []

    def phase(name):
        if name not in ran:
            ran.append(name)
        if tracker is not None:
            tracker.phase = name
        if nvml is not None:
            nvml.phase = name
        for m in modes:
            if hasattr(m, "phase"):
                m.phase = name
        return cuda_stats.phase(name) if cuda_stats else contextlib.nullcontext()

    model.train()
    with contextlib.ExitStack() as stack:
        if nvml is not None:
            stack.enter_context(nvml)
        if cuda_stats is not None:
            stack.enter_context(cuda_stats)
        if tracker is not None:
            stack.enter_context(tracker)
        for m in modes:
            if hasattr(m, "live"):
                m.live = tracker
        with contextlib.ExitStack() as first:  # step 1: everything is measured, the ledger included
            first.enter_context(ledger)
            for m in modes:
                first.enter_context(m)
            with phase("forward"):
                out = _call(model, batch)
                loss = loss_fn(out)
                kind = loss_kind(out, loss_fn)
            ledger.phase = RECOMPUTE
            with phase("backward"):
                loss.backward()
            grads = [p.grad for p in trainable if p.grad is not None]
            with phase("optimizer"):
                opt.step()
                # a training loop drops the outputs (logits) before the next step: release them inside the
                # phase, so that what stays allocated after it is weights, gradients and optimizer state
                loss_value = float(loss.detach()) if read_loss else None
                del out, loss
        state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        if tracker is not None and host_state is not None:
            for t in host_state(opt):
                tracker.mark_host(t)
        grad_ids = {tracker.record_id(g) for g in grads} - {None} if tracker is not None else set()
        grad_bytes = _unique_bytes(grads)
        del grads  # later steps free them (zero_grad): hold no reference
        for n in range(2, steps + 1):  # later steps: the optimizer state exists from the start (steady state)
            _later_step(n, model, batch, loss_fn, opt, modes, phase)
        # what happens after this (the caller dropping the optimizer, zero_grad below) is not the step
        live_end = tracker.event_count if tracker is not None else 0

    result = _summarize(ledger, tracker, model, params, trainable, inputs, state, grad_ids, grad_bytes, kind,
                        loss_value, cuda_stats, nvml, ran, live_end, opt)
    opt.zero_grad(set_to_none=True)
    return result


def _later_step(n: int, model, batch, loss_fn, opt, modes, phase) -> None:
    """Training step n > 1, seen by the live tracker, the CUDA statistics and the modes only."""
    with contextlib.ExitStack() as later:
        for m in modes:
            later.enter_context(m)
        with phase(f"forward.{n}"):
            opt.zero_grad(set_to_none=True)  # what a training loop does before each step
            loss = loss_fn(_call(model, batch))
        with phase(f"backward.{n}"):
            loss.backward()
        with phase(f"optimizer.{n}"):
            opt.step()
            del loss


def _summarize(ledger, tracker, model, params, trainable, inputs, state, grad_ids, grad_bytes, kind, loss_value,
               cuda_stats, nvml, ran, live_end, opt) -> StepProfile:
    """What the profilers measured over the step, as one StepProfile (the first step's figures)."""
    report = ledger.report()
    opt_bytes = _unique_bytes(state)
    param_bytes = _unique_bytes(params)
    buffer_bytes = _unique_bytes(list(model.buffers()))
    input_bytes = _unique_bytes(inputs)
    if tracker is not None:
        opt_ids = ({tracker.record_id(t) for t in state} - {None}) | tracker.host_ids
        # activations + temporaries over forward and backward (the optimizer's own temporaries
        # are in peak_by_phase["optimizer"] and in the step's estimated peak); first step only
        first_step = ("forward", "backward", "optimizer")
        act_peak = tracker.peak(exclude=grad_ids | opt_ids, phases=("forward", "backward"))
        step_peak = tracker.peak(exclude=opt_ids, phases=first_step).bytes
        by_phase = {k: v for k, v in tracker.peaks_by_phase(exclude=grad_ids | opt_ids).items() if k in first_step}
        peak_bytes, peak_phase = act_peak.bytes, act_peak.phase
    else:
        peak_bytes, peak_phase, by_phase = report.total(FORWARD), "forward", {}
        step_peak = peak_bytes + grad_bytes
    return StepProfile(
        ledger=report,
        activation_bytes=report.total(FORWARD),
        recompute_bytes=report.total(RECOMPUTE),
        peak_activation_bytes=peak_bytes,
        peak_phase=peak_phase,
        peak_by_phase=by_phase,
        estimated_peak_bytes=param_bytes + buffer_bytes + input_bytes + opt_bytes + step_peak,
        param_bytes=param_bytes,
        trainable_param_bytes=_unique_bytes(trainable),
        buffer_bytes=buffer_bytes,
        grad_bytes=grad_bytes,
        optimizer_bytes=opt_bytes,
        input_bytes=input_bytes,
        num_params=sum(p.numel() for p in params),
        num_trainable_params=sum(p.numel() for p in trainable),
        loss=loss_value,
        cuda=cuda_stats.summary() if cuda_stats else {},
        nvml=nvml.summary() if nvml else {},
        prestep_bytes=_storage_sizes([*params, *model.buffers(), *inputs]),
        live=tracker,
        phases=ran,
        live_end=live_end,
        optimizer_name=type(opt).__name__,
        loss_kind=kind,
    )


def _call(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, tuple | list):
        return model(*batch)
    return model(batch)


def _flatten_tensors(batch) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    values = batch.values() if isinstance(batch, dict) else batch
    return [t for t in values if isinstance(t, torch.Tensor)]
