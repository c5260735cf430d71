"""CUDA caching-allocator statistics per phase of a step.

Per phase: peak allocated / reserved / active and what stays allocated at its
end. Activation memory as the MEFT paper defines it: the step's
max_memory_allocated() minus memory_allocated() after the step (weights,
gradients and optimizer state are what stays).
"""

from __future__ import annotations

import contextlib

import torch


class CudaAllocatorStats:
    def __init__(self, device=None, snapshot_path: str | None = None):
        self.device = device
        self.snapshot_path = snapshot_path
        self.phases: dict[str, dict[str, int]] = {}
        self.start_allocated = 0

    def __enter__(self) -> CudaAllocatorStats:
        torch.cuda.synchronize(self.device)
        if self.snapshot_path:
            torch.cuda.memory._record_memory_history(max_entries=200_000)
        self.start_allocated = torch.cuda.memory_allocated(self.device)
        return self

    @contextlib.contextmanager
    def phase(self, name: str):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        torch.cuda.synchronize(self.device)
        s = torch.cuda.memory_stats(self.device)
        self.phases[name] = {
            "peak_allocated_bytes": s.get("allocated_bytes.all.peak", 0),
            "peak_reserved_bytes": s.get("reserved_bytes.all.peak", 0),
            "peak_active_bytes": s.get("active_bytes.all.peak", 0),
            "end_allocated_bytes": s.get("allocated_bytes.all.current", 0),
        }

    def __exit__(self, *exc) -> None:
        if self.snapshot_path:
            from ..paths import make_parents

            torch.cuda.memory._dump_snapshot(str(make_parents(self.snapshot_path)))
            torch.cuda.memory._record_memory_history(enabled=None)

    def summary(self) -> dict:
        if not self.phases:
            return {}
        peak = max(p["peak_allocated_bytes"] for p in self.phases.values())
        end = list(self.phases.values())[-1]["end_allocated_bytes"]
        return {
            "device_name": torch.cuda.get_device_name(self.device),
            "start_allocated_bytes": self.start_allocated,
            "max_allocated_bytes": peak,
            "max_reserved_bytes": max(p["peak_reserved_bytes"] for p in self.phases.values()),
            "end_allocated_bytes": end,
            "paper_activation_bytes": peak - end,
            "phases": self.phases,
        }
