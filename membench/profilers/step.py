"""Profile one training step (forward, backward, optimizer step) of any nn.Module.

The profilers stack like this; each knows nothing of methods or backbones (the default optimizer is
membench.optimizers' own, a torch-free table):

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

from .. import optimizers
from ..gpu.predict import first_step_phase
from .cuda import CudaAllocatorStats
from .ledger import FORWARD, RECOMPUTE, LedgerReport, SavedTensorLedger
from .live import LiveMemoryTracker, live_peaks
from .nvml import NvmlSampler
from .weights import attached


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
    paged_bytes: int = 0  # optimizer state in CUDA unified memory (StepPlan.paged_state)
    marks: dict[int, str] = field(default_factory=dict)  # live records the summary leaves out: "grad", "state"
    trace: Any = None  # a time line synthesized for this step (membench.depth), in place of the live tracker's


@dataclass
class StepPlan:
    """How a step runs: what a caller (membench.backends) chooses for the device and target it describes.

    `optimizer`: params -> torch optimizer (default: membench.optimizers' default, AdamW as PyTorch runs
    it on these tensors); its state counts as the step's optimizer memory. `modes`: context managers
    entered innermost around the step; profile_step sets their `phase` attribute as the step moves on
    and their `live` attribute to the live tracker, where they have one. `cuda`: read the CUDA
    allocator per phase and NVML.
    `host_device` and `host_state` tell the live tracker which storages live in host memory: those on
    that device type, and the optimizer state tensors `host_state(optimizer)` names; `paged_state(optimizer)`
    names state a GPU keeps in CUDA unified memory (outside the allocator, in nvidia-smi: `paged_bytes`). `steps` > 1 runs
    more training steps after the first (zero_grad, forward, backward, optimizer), seen only by the
    live tracker, the CUDA statistics and the modes: what a training loop holds once the optimizer
    state exists; their phases are "forward.2", "backward.2", ... Everything else describes the first
    step. `micro_steps` > 1 accumulates gradients: each step runs that many forward and backward passes
    (loss divided by their number, as a training loop does) before its optimizer step; the gradients of
    the first stay allocated through the next ones, whose phases are "forward.m2", "backward.m2", ... (the
    ledger describes the first micro-step: what one micro-batch saves). `autocast()`: the context each forward
    (and its loss) runs in, mixed precision's autocast region; backward runs outside it, as AMP's does.
    `scaler()`: a GradScaler (fp16 mixed precision): the loss is scaled before backward, and the optimizer
    steps through it (unscale, inf check, step, update). `progress(phase)` is called as each phase begins."""

    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None
    optimizer_name: str = ""
    modes: Sequence[Any] = ()
    cuda: bool = False
    read_loss: bool = True
    host_device: str | None = None
    host_state: Callable[[torch.optim.Optimizer], Iterable[torch.Tensor]] | None = None
    paged_state: Callable[[torch.optim.Optimizer], Iterable[torch.Tensor]] | None = None  # in unified memory
    steps: int = 1
    micro_steps: int = 1  # gradient accumulation: forward and backward passes per optimizer step
    autocast: Callable[[], Any] | None = None  # the forward's autocast region (mixed precision)
    scaler: Callable[[], Any] | None = None  # -> a GradScaler (16-mixed)
    track_live: bool = True
    snapshot_path: str | None = None
    progress: Callable[[str], None] | None = None


def profile_step(model: nn.Module, batch: dict[str, Any] | tuple | torch.Tensor, plan: StepPlan | None = None, *,
                 loss_fn: Callable[[Any], torch.Tensor] = default_loss,
                 groups: dict[nn.Module, str] | None = None) -> StepProfile:
    """Run one step of `model` on `batch` under the profilers (as `plan` says) and return what they measured."""
    return _Step(model, batch, plan or StepPlan(), loss_fn, groups).run()


@dataclass
class _FirstStep:
    """What the first step leaves for the summary."""

    state: list
    grad_ids: set
    grad_bytes: int
    loss_kind: str
    loss_value: float | None
    live_end: int
    paged_bytes: int = 0


class _Step:
    """One profiled step: the profilers around it, the first step measured, later steps for the allocator."""

    def __init__(self, model, batch, plan: StepPlan, loss_fn, groups):
        self.model, self.batch, self.plan, self.loss_fn = model, batch, plan, loss_fn
        self.params = [p for p in model.parameters()]
        self.trainable = [p for p in self.params if p.requires_grad]
        if not self.trainable:
            raise ValueError("the model has no trainable parameter: nothing to fine-tune")
        self.opt = (plan.optimizer or _default_optimizer(self.trainable))(self.trainable)
        self.scaler = plan.scaler() if plan.scaler is not None else None
        self.inputs = _flatten_tensors(batch)
        # everything the model holds when the step starts (a quantized weight's scales too), and its sizes then
        held, buffers = [t for p in self.params for t in attached(p)], list(model.buffers())
        weights = self.params + held + buffers  # (weights.weight_tensors' order)
        self.param_bytes = _unique_bytes(self.params + held)
        self.buffer_bytes = _unique_bytes(buffers)
        self.prestep = _storage_sizes([*weights, *self.inputs])
        self.tracker = (LiveMemoryTracker(weights + self.inputs, weights=weights, host_device=plan.host_device)
                        if plan.track_live else None)
        self.ledger = SavedTensorLedger(model, groups, inputs=tuple(self.inputs),
                                        is_weight_copy=self.tracker.is_weight_copy if self.tracker else None)
        self.cuda_stats = CudaAllocatorStats(snapshot_path=plan.snapshot_path) if plan.cuda else None
        self.nvml = NvmlSampler() if plan.cuda else None
        self.ran: list[str] = []

    def phase(self, name: str):
        if self.plan.progress is not None:
            self.plan.progress(name)
        if name not in self.ran:
            self.ran.append(name)
        for watcher in (self.tracker, self.nvml, *self.plan.modes):
            if watcher is not None and hasattr(watcher, "phase"):
                watcher.phase = name
        return self.cuda_stats.phase(name) if self.cuda_stats else contextlib.nullcontext()

    def run(self) -> StepProfile:
        self.model.train()
        with contextlib.ExitStack() as stack:
            for profiler in (self.nvml, self.cuda_stats, self.tracker):
                if profiler is not None:
                    stack.enter_context(profiler)
            for m in self.plan.modes:
                if hasattr(m, "live"):
                    m.live = self.tracker
            first = self._first()
            for n in range(2, self.plan.steps + 1):  # later steps: the optimizer state exists from the start
                self._later(n)
            # what happens after this (the caller dropping the optimizer, zero_grad below) is not the step
            first.live_end = self.tracker.event_count if self.tracker is not None else 0
            if self.nvml is not None:  # every kernel of the step has run: the context is as large as it gets
                torch.cuda.synchronize()
                self.nvml.measure_context(torch.cuda.memory_reserved())
        result = self._summarize(first)
        self.opt.zero_grad(set_to_none=True)
        return result

    def _first(self) -> _FirstStep:
        """Step 1: everything is measured, the ledger included."""
        tracker, opt = self.tracker, self.opt
        with contextlib.ExitStack() as first:
            first.enter_context(self.ledger)
            for m in self.plan.modes:
                first.enter_context(m)
            with self.phase("forward"):
                out, loss = self._forward()
                kind = loss_kind(out, self.loss_fn)
            self.ledger.phase = RECOMPUTE
            with self.phase("backward"):
                self._backward(loss)
            if self.plan.micro_steps > 1:
                self.ledger.recording = False  # what one micro-batch saves is the first micro-step's
                del out, loss  # a training loop drops a micro-step's outputs before the next one's forward
                out, loss = self._accumulate()
            grads = [p.grad for p in self.trainable if p.grad is not None]
            with self.phase("optimizer"):
                self._optimizer_step()
                # a training loop drops the outputs (logits) before the next step: release them inside the
                # phase, so that what stays allocated after it is weights, gradients and optimizer state
                loss_value = float(loss.detach()) if self.plan.read_loss else None
                del out, loss
        state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        host = list(self.plan.host_state(opt)) if self.plan.host_state is not None else []
        paged = list(self.plan.paged_state(opt)) if self.plan.paged_state is not None else []
        if tracker is not None:
            for t in host + paged:  # neither is the caching allocator's: left out of its replay
                tracker.mark_host(t)
        grad_ids = {tracker.record_id(g) for g in grads} - {None} if tracker is not None else set()
        grad_bytes = _unique_bytes(grads)
        del grads  # later steps free them (zero_grad): hold no reference
        return _FirstStep(state, grad_ids, grad_bytes, kind, loss_value, 0, _unique_bytes(paged))

    def _forward(self):
        """The model's output and the loss a micro-step backpropagates, under the forward's autocast."""
        with self.plan.autocast() if self.plan.autocast is not None else contextlib.nullcontext():
            out = _call(self.model, self.batch)
            loss = self._scaled(self.loss_fn(out))
        return out, loss

    def _backward(self, loss) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _optimizer_step(self) -> None:
        if self.scaler is None:
            self.opt.step()
            return
        self.scaler.step(self.opt)  # unscale_ (inf check) then step
        self.scaler.update()

    def _scaled(self, loss):
        """The loss a micro-step backpropagates: divided by the micro-steps, as accumulation does."""
        return loss / self.plan.micro_steps if self.plan.micro_steps > 1 else loss

    def _accumulate(self, step: str = ""):
        """Micro-steps 2..N of a step (`step`: "" for the first, ".2" for the second, ...): forward and backward
        with the gradients so far allocated; returns the last one's output and loss (dropped after the step)."""
        out = loss = None
        for k in range(2, self.plan.micro_steps + 1):
            del out, loss
            with self.phase(f"forward{step}.m{k}"):
                out, loss = self._forward()
            with self.phase(f"backward{step}.m{k}"):
                self._backward(loss)
            if k < self.plan.micro_steps:
                out = loss = None
        return out, loss

    def _later(self, n: int) -> None:
        """Training step n > 1, seen by the live tracker, the CUDA statistics and the modes only."""
        with contextlib.ExitStack() as later:
            for m in self.plan.modes:
                later.enter_context(m)
            with self.phase(f"forward.{n}"):
                self.opt.zero_grad(set_to_none=True)  # what a training loop does before each step
                _out, loss = self._forward()
                del _out
            with self.phase(f"backward.{n}"):
                self._backward(loss)
            if self.plan.micro_steps > 1:
                del loss
                _out, loss = self._accumulate(f".{n}")
            with self.phase(f"optimizer.{n}"):
                self._optimizer_step()
                del loss

    def _summarize(self, first: _FirstStep) -> StepProfile:
        """What the profilers measured over the step, as one StepProfile (the first step's figures)."""
        tracker, params = self.tracker, self.params
        report = self.ledger.report()
        opt_bytes = _unique_bytes(first.state)
        param_bytes, buffer_bytes = self.param_bytes, self.buffer_bytes
        input_bytes = _unique_bytes(self.inputs)
        if tracker is not None:
            opt_ids = ({tracker.record_id(t) for t in first.state} - {None}) | tracker.host_ids
            # activations + temporaries over forward and backward (the optimizer's own temporaries
            # are in peak_by_phase["optimizer"] and in the step's estimated peak); first step only
            first_step = [p for p in self.ran if first_step_phase(p)]  # its micro-steps too
            peaks = live_peaks(tracker.sizes, tracker.events, grads=first.grad_ids, state=opt_ids,
                               first_step=first_step)
            peak_bytes, peak_phase, by_phase = peaks.activation.bytes, peaks.activation.phase, peaks.by_phase
            step_peak = peaks.step_bytes
            marks = {**dict.fromkeys(first.grad_ids, "grad"), **dict.fromkeys(opt_ids - tracker.host_ids, "state")}
        else:
            peak_bytes, peak_phase, by_phase = report.total(FORWARD), "forward", {}
            step_peak = peak_bytes + first.grad_bytes
            marks = {}
        return StepProfile(
            ledger=report,
            activation_bytes=report.total(FORWARD),
            recompute_bytes=report.total(RECOMPUTE),
            peak_activation_bytes=peak_bytes,
            peak_phase=peak_phase,
            peak_by_phase=by_phase,
            estimated_peak_bytes=estimated_peak(param_bytes, buffer_bytes, input_bytes, opt_bytes, step_peak),
            param_bytes=param_bytes,
            trainable_param_bytes=_unique_bytes(self.trainable),
            buffer_bytes=buffer_bytes,
            grad_bytes=first.grad_bytes,
            optimizer_bytes=opt_bytes,
            input_bytes=input_bytes,
            num_params=sum(p.numel() for p in params),
            num_trainable_params=sum(p.numel() for p in self.trainable),
            loss=first.loss_value,
            cuda=self.cuda_stats.summary() if self.cuda_stats else {},
            nvml=self.nvml.summary() if self.nvml else {},
            prestep_bytes=self.prestep,
            live=tracker,
            phases=self.ran,
            live_end=first.live_end,
            optimizer_name=type(self.opt).__name__,
            loss_kind=first.loss_kind,
            paged_bytes=first.paged_bytes,
            marks=marks,
        )


def estimated_peak(param_bytes: int, buffer_bytes: int, input_bytes: int, optimizer_bytes: int, step_bytes: int) -> int:
    """The step's estimated peak: what is allocated before it and its optimizer state, plus the first step's live
    peak of everything else (activations, temporaries, gradients)."""
    return param_bytes + buffer_bytes + input_bytes + optimizer_bytes + step_bytes


def _default_optimizer(params) -> Callable:
    """membench.optimizers' default as PyTorch runs it on these tensors: foreach on CUDA ones, else the for-loop."""
    return optimizers.factory(optimizers.DEFAULT, "cuda" if params[0].is_cuda else "cpu")


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

