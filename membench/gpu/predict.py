"""Predict the CUDA allocator's figures for one step: replay its allocations through the model (no torch).

    before the step   parameters, buffers, then the batch: one block each, never freed
    the step          every storage the live tracker saw, allocated and freed in order, with its
                      phase; host-resident ones skipped; plus kernel allocations (cuBLAS /
                      cuBLASLt workspaces, attention-backward temporaries) at their positions
    per phase         what CudaAllocatorStats measures on a GPU: peaks reset when a phase
                      starts, the phase's peak allocated / reserved, allocated at its end

    activation_bytes_paper = max_allocated - allocated_after_step     (the MEFT paper's measure)
    nvidia_smi_bytes       = max_reserved + CUDA context               (approximate: the context)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

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


def _phase_stats(alloc: CachingAllocatorModel) -> dict[str, int]:
    return {"max_allocated_bytes": alloc.peak_allocated, "max_reserved_bytes": alloc.peak_reserved,
            "allocated_end_bytes": alloc.allocated}


def predict(trace: AllocationTrace, *, phases: list[str] | None = None, config: AllocatorConfig | None = None,
            capacity: int | None = None, context_bytes: int = 0) -> dict:
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
    phases_out: dict[str, dict[str, int]] = {}
    current = -1  # index in `order` of the phase being replayed
    handles: dict[int, int | None] = {}
    workspace = start_allocated = 0
    oom = None

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
    first = [stats[p] for p in PHASES if p in stats]
    after = alloc.allocated
    return {
        "max_allocated_bytes": max_allocated,
        "max_reserved_bytes": max_reserved,
        "allocated_after_step_bytes": after,
        "start_allocated_bytes": start_allocated,
        "activation_bytes_paper": max_allocated - after,
        "cublas_workspace_bytes": workspace,
        "context_bytes": context_bytes,
        "nvidia_smi_bytes": max_reserved + context_bytes,
        "segments": alloc.num_segments,
        "alloc_conf": config.to_string(),
        "first_step": {"max_allocated_bytes": max([p["max_allocated_bytes"] for p in first], default=0),
                       "max_reserved_bytes": max([p["max_reserved_bytes"] for p in first], default=0)},
        "phases": {name: stats[name] for name in order if name in stats},
        "oom": oom,
    }
