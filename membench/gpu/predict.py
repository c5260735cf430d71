"""Predict the CUDA allocator's figures for one step: replay its allocations through the model (no torch).

    before the step   parameters, buffers, then the batch: one block each, never freed
    the step          every storage the live tracker saw, allocated and freed in order, with its
                      phase; host-resident ones skipped; plus kernel allocations (cuBLAS /
                      cuBLASLt workspaces, attention-backward temporaries) at their positions
    per phase         what CudaAllocatorStats measures on a GPU: peaks reset when a phase
                      starts, the phase's peak allocated / reserved, allocated at its end

    activation_bytes_paper = max_allocated - allocated_after_step     (the MEFT paper's measure)
    nvidia_smi_bytes       = max_reserved + CUDA context               (approximate: the context)

`predict` returns a `PredictedCuda`; the backend that ran the step adds what only it knows (where the
context figure comes from, the GPU, the SDPA kernels picked, the kernels' own allocations).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, TypedDict

from .allocator import AllocatorConfig, CachingAllocatorModel, OutOfMemory

PHASES = ("forward", "backward", "optimizer")


@dataclass
class AllocationTrace:
    """A step's allocations, as the profilers saw them (plain data)."""

    prestep: list[int]  # sizes allocated before the step, in order (parameters, buffers, inputs)
    sizes: list[int]  # record id -> bytes
    events: list[tuple[int, int, str]]  # (+1 alloc | -1 free, record id, phase)
    host: set[int] = field(default_factory=set)  # records that live in host memory
    kernel: list[tuple[int, int, str, str, str]] = field(default_factory=list)  # (position, nbytes, kind, label, phase)
    # what a record is to the step's summary (not to the allocator): "grad" (the first step's gradients), "state"
    # (optimizer state); the live peaks leave them out as the profiler does (membench.profilers.live.live_peaks)
    marks: dict[int, str] = field(default_factory=dict)


class PhaseFigures(TypedDict):
    """What CudaAllocatorStats measures in one phase (peaks reset when it starts)."""

    max_allocated_bytes: int
    max_reserved_bytes: int
    allocated_end_bytes: int


class PeakFigures(TypedDict):
    max_allocated_bytes: int
    max_reserved_bytes: int


class OutOfMemoryAt(TypedDict):
    phase: str  # a phase, or "before the step"
    requested_bytes: int
    reserved_bytes: int
    capacity_bytes: int | None


class KernelAllocation(TypedDict):
    label: str  # "cuBLAS workspace (main thread)", ...
    bytes: int
    kind: str  # "persistent" (the replay lists only those)
    phase: str


def _figure(*, column: int | None = None, **default) -> Any:
    """A field of PredictedCuda. `column`: the results database stores it as the column predicted_<name>,
    added by that schema version's migration (membench.results.schema); `default`: default= or
    default_factory=, for what a backend adds (a result saved before it existed loads with it)."""
    return field(metadata={"column": column}, **default)


@dataclass(frozen=True)
class PredictedCuda:
    """The allocator figures of one step on a CUDA target: what `predict` replays, then what the backend adds.

    It reads like the JSON dict it is saved as (RunResult.predicted_cuda): p["max_reserved_bytes"] is
    p.max_reserved_bytes, and to_dict() is that dict, its keys in this order."""

    max_allocated_bytes: int = _figure(column=3)  # torch.cuda.max_memory_allocated over every step traced
    max_reserved_bytes: int = _figure(column=3)  # torch.cuda.max_memory_reserved: allocated + the cache
    allocated_after_step_bytes: int = _figure()
    start_allocated_bytes: int = _figure()  # parameters, buffers and the batch, before the step
    activation_bytes_paper: int = _figure(column=3)  # max allocated - allocated after the step (MEFT paper)
    cublas_workspace_bytes: int = _figure()  # the persistent cuBLAS / cuBLASLt workspaces
    context_bytes: int = _figure()  # the CUDA context nvidia-smi shows besides the allocator
    nvidia_smi_bytes: int = _figure()  # max reserved + context (+ paged_bytes, added by the backend)
    segments: int = _figure()
    alloc_conf: str = _figure()  # the allocator configuration replayed (PYTORCH_CUDA_ALLOC_CONF form)
    first_step: PeakFigures = _figure()  # the first forward, backward and optimizer alone
    phases: dict[str, PhaseFigures] = _figure()  # per phase, in the order they ran
    oom: OutOfMemoryAt | None = _figure()  # where the step did not fit `capacity`, else None
    # added by the backend (membench.backends)
    context_source: str = _figure(default="GPU table (typical, lazy loading)")  # or "given (--context)", ...
    gpu: str | None = _figure(default=None)  # the GPU's name in the table
    sdpa_backends: dict[str, int] = _figure(default_factory=dict)  # kernel -> calls in the first step
    kernel_allocations: list[KernelAllocation] = _figure(default_factory=list)
    paged_bytes: int = _figure(default=0)  # optimizer state in CUDA unified memory: not the allocator's, in nvidia-smi
    approximate: list[str] = _figure(default_factory=lambda: ["context_bytes", "nvidia_smi_bytes"])  # which figures

    def __getitem__(self, key: str) -> Any:
        if key not in _PREDICTED_FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _PREDICTED_FIELDS else default

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def settings(self) -> list[tuple[str, str]]:
        """(what, value) of the settings that shaped these figures besides the GPU, as a table prints them."""
        return [("allocator config", self.alloc_conf)] if self.alloc_conf else []

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictedCuda:
        values = {k: v for k, v in data.items() if k in _PREDICTED_FIELDS}
        # saved before the CUDA target traced two steps: the one step it traced was the first
        values.setdefault("first_step", {"max_allocated_bytes": values.get("max_allocated_bytes"),
                                         "max_reserved_bytes": values.get("max_reserved_bytes")})
        return cls(**values)


_PREDICTED_FIELDS = frozenset(f.name for f in dataclasses.fields(PredictedCuda))


def stored_columns(added_in: int | None = None) -> tuple[str, ...]:
    """The PredictedCuda fields the results database stores as predicted_<name> columns (`added_in`: only those
    that schema version added)."""
    return tuple(f.name for f in dataclasses.fields(PredictedCuda)
                 if f.metadata["column"] is not None and added_in in (None, f.metadata["column"]))


def first_step_phase(phase: str) -> bool:
    """forward, backward, optimizer and the first step's micro-steps (forward.m2), not a later step's (forward.2)."""
    return not any(part.isdigit() for part in phase.split(".")[1:])


def _phase_stats(alloc: CachingAllocatorModel) -> PhaseFigures:
    return {"max_allocated_bytes": alloc.peak_allocated, "max_reserved_bytes": alloc.peak_reserved,
            "allocated_end_bytes": alloc.allocated}


def predict(trace: AllocationTrace, *, phases: list[str] | None = None, config: AllocatorConfig | None = None,
            capacity: int | None = None, context_bytes: int = 0) -> PredictedCuda:
    """Replay `trace`; the figures `torch.cuda.memory_stats()` would give, overall and per phase.

    `phases`: the phases in the order they ran (default forward, backward, optimizer, then
    any other in order of appearance); a phase without events is reported flat.
    `first_step` has the peaks of the first forward/backward/optimizer alone; the top-level
    figures cover every step traced (with `profile_step(steps=2)`: the steady state).
    `capacity`: bytes the allocator may reserve (None: unlimited). If the step does
    not fit, the result has `oom` = {phase, requested_bytes, reserved_bytes} and the
    figures up to that point."""
    config = config or AllocatorConfig()
    alloc = CachingAllocatorModel(config, capacity)
    kernel_at: dict[int, list] = defaultdict(list)
    for ev in trace.kernel:
        kernel_at[ev[0]].append(ev)
    seen = [p for _s, _r, p in trace.events] + [ev[4] for ev in trace.kernel]
    order = list(dict.fromkeys([*(phases or PHASES), *seen]))
    phases_out: dict[str, PhaseFigures] = {}
    current = -1  # index in `order` of the phase being replayed
    handles: dict[int, int | None] = {}
    workspace = start_allocated = 0
    oom: OutOfMemoryAt | None = None

    def advance(to: int) -> None:
        """Close the current phase and any phase without events up to `to`; peaks reset at each start."""
        nonlocal current
        if current >= 0:
            phases_out[order[current]] = _phase_stats(alloc)
        for i in range(current + 1, to + 1):
            alloc.reset_peaks()
            if i < to:
                phases_out[order[i]] = _phase_stats(alloc)
        current = to

    def kernel_events(pos: int) -> None:
        nonlocal workspace
        transient = []
        for _pos, nbytes, kind, _label, phase in kernel_at.get(pos, ()):
            if order.index(phase) > current:
                advance(order.index(phase))
            handle = alloc.malloc(nbytes)
            if kind == "persistent":
                workspace += nbytes
            else:
                transient.append(handle)
        for handle in transient:
            alloc.free(handle)

    try:
        for size in trace.prestep:
            alloc.malloc(size)
        start_allocated = alloc.allocated
        for i, (sign, rid, phase) in enumerate(trace.events):
            kernel_events(i)
            idx = order.index(phase)
            if idx != current:
                advance(idx)
            if rid in trace.host:
                continue
            if sign > 0:
                handles[rid] = alloc.malloc(trace.sizes[rid])
            elif rid in handles:
                alloc.free(handles.pop(rid))
        kernel_events(len(trace.events))
        if current < len(order) - 1:
            advance(len(order) - 1)
        phases_out[order[current]] = _phase_stats(alloc)
    except OutOfMemory as exc:
        oom = {"phase": order[current] if current >= 0 else "before the step", "requested_bytes": exc.requested,
               "reserved_bytes": exc.reserved, "capacity_bytes": exc.capacity}
        if current >= 0:
            phases_out[order[current]] = _phase_stats(alloc)

    stats = phases_out
    max_allocated = max([p["max_allocated_bytes"] for p in stats.values()] + [start_allocated])
    max_reserved = max([p["max_reserved_bytes"] for p in stats.values()] + [alloc.reserved])
    first = [v for p, v in stats.items() if first_step_phase(p)]
    after = alloc.allocated
    return PredictedCuda(
        max_allocated_bytes=max_allocated,
        max_reserved_bytes=max_reserved,
        allocated_after_step_bytes=after,
        start_allocated_bytes=start_allocated,
        activation_bytes_paper=max_allocated - after,
        cublas_workspace_bytes=workspace,
        context_bytes=context_bytes,
        nvidia_smi_bytes=max_reserved + context_bytes,
        segments=alloc.num_segments,
        alloc_conf=config.to_string(),
        first_step={"max_allocated_bytes": max([p["max_allocated_bytes"] for p in first], default=0),
                    "max_reserved_bytes": max([p["max_reserved_bytes"] for p in first], default=0)},
        phases={name: stats[name] for name in order if name in stats},
        oom=oom,
    )
