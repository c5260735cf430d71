"""NVML sampler: device-level used memory (CUDA context and allocator cache included).

NVML never sees activations; it answers "how full was the card". Where NVML is
missing (no driver, CPU machines) the sampler reports itself unavailable and
every reading is None, instead of failing the run.
"""

from __future__ import annotations

import threading
import time


class NvmlSampler:
    def __init__(self, device_index: int = 0, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.available = False
        self.reason = ""
        self.peak_used: dict[str, int] = {}
        self.phase = "setup"
        self.context_bytes: int | None = None  # measure_context()
        self.context_source = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self.available = True
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
            self.reason = f"{type(exc).__name__}: {exc}".strip()

    def used_bytes(self) -> int | None:
        if not self.available:
            return None
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def process_used_bytes(self) -> int | None:
        """What NVML charges this process on the device (None where the driver does not say, e.g. in
        a container without the host's PID namespace)."""
        import os

        if not self.available:
            return None
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:  # NVMLError_NotSupported and the like
            return None
        used = [p.usedGpuMemory for p in procs if p.pid == os.getpid() and p.usedGpuMemory is not None]
        return int(used[0]) if used else None

    def measure_context(self, reserved_bytes: int) -> None:
        """The CUDA context as measured: what NVML charges this process (else the whole device) minus
        what the caching allocator holds, read together once the step's kernels are loaded (with lazy
        loading the context grows as kernels first run)."""
        if not self.available:
            return
        process = self.process_used_bytes()
        used, self.context_source = ((process, "process") if process is not None
                                     else (self.used_bytes(), "device (other processes included)"))
        self.context_bytes = max(0, used - int(reserved_bytes))

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self.used_bytes()
            self.peak_used[self.phase] = max(self.peak_used.get(self.phase, 0), used)
            time.sleep(self.interval_s)

    def __enter__(self) -> NvmlSampler:
        if self.available:
            self._thread = threading.Thread(target=self._run, name="membench-nvml", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            used = self.used_bytes()
            self.peak_used[self.phase] = max(self.peak_used.get(self.phase, 0), used)

    def summary(self) -> dict:
        if not self.available:
            return {"available": False, "reason": self.reason or "unavailable"}
        out = {"available": True, "peak_used_bytes": max(self.peak_used.values(), default=None),
               "peak_used_by_phase": dict(self.peak_used)}
        if self.context_bytes is not None:
            out.update(context_bytes=self.context_bytes, context_source=self.context_source)
        return out
