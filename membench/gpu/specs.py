"""The GPUs a prediction can target: what each one brings to the memory budget (no torch).

Per GPU: its compute capability (which SDPA kernels exist, cuBLAS workspace size),
its memory as `nvidia-smi` reports the total, the cuBLAS workspace PyTorch allocates
through the caching allocator, and a typical CUDA context (never counted by the
allocator, visible to nvidia-smi).

Sources (shared/cuda-notes.md): the workspace default `:4096:2:16:8` (4096 KiB x 2 +
16 KiB x 8 = 8,519,680 B) and 32 MiB on sm90 come from PyTorch's
aten/src/ATen/cuda/CublasHandlePool.cpp (`parseChosenWorkspaceSize`); cuBLASLt keeps
a 1 MiB workspace of its own (`CUBLASLT_WORKSPACE_SIZE`, in KiB). Context sizes are
typical figures with lazy module loading (CUDA >= 11.7) and vary with the driver:
they are marked approximate wherever they are used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError

MiB = 2**20
CUBLAS_WORKSPACE_DEFAULT = 4096 * 1024 * 2 + 16 * 1024 * 8  # ":4096:2:16:8"
CUBLAS_WORKSPACE_SM90 = 4096 * 8 * 1024  # 32 MiB on Hopper (compute capability exactly 9.0)
CUBLASLT_WORKSPACE = 1024 * 1024  # 1 MiB


def cublas_workspace_bytes(major: int, minor: int) -> int:
    """What PyTorch allocates per (cuBLAS handle, stream) when CUBLAS_WORKSPACE_CONFIG is unset."""
    return CUBLAS_WORKSPACE_SM90 if (major, minor) == (9, 0) else CUBLAS_WORKSPACE_DEFAULT


@dataclass(frozen=True)
class GpuSpec:
    name: str
    label: str  # what torch.cuda.get_device_name() typically returns
    major: int
    minor: int
    memory_bytes: int  # total memory as nvidia-smi reports it
    context_bytes: int  # typical CUDA context (approximate)
    prefers_cudnn_sdpa: bool = False  # torch >= 2.9 with cuDNN >= 9.15 puts cuDNN attention first (sm90/sm100)
    pattern: str = ""  # a regular expression that finds this model in torch.cuda.get_device_name(), lowercased
    sms: int = 0  # streaming multiprocessors (bitsandbytes' 4-bit matmul picks its kernel by them)

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def cublas_workspace_bytes(self) -> int:
        return cublas_workspace_bytes(self.major, self.minor)

    def names_device(self, device_name: str) -> bool:
        """Whether a real device's name (`torch.cuda.get_device_name()`) is this model's (of any size)."""
        return bool(self.pattern) and re.search(self.pattern, device_name.lower()) is not None

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "compute_capability": self.compute_capability,
                "memory_bytes": self.memory_bytes, "context_bytes": self.context_bytes,
                "cublas_workspace_bytes": self.cublas_workspace_bytes,
                "prefers_cudnn_sdpa": self.prefers_cudnn_sdpa}


def _gpu(name, label, pattern, cc, memory_mib, context_mib, sms, cudnn=False) -> GpuSpec:
    major, minor = cc
    return GpuSpec(name, label, major, minor, memory_mib * MiB, context_mib * MiB, cudnn, pattern, sms)


# One row per GPU. `pattern` finds the model in a real device's name (a measured run's spec is the row it
# finds); rows of one model in several sizes share it, and the device's memory picks the row. Whole words
# only: "l4" is not the L40S, "a10g" not the A100.
GPUS: dict[str, GpuSpec] = {g.name: g for g in (
    _gpu("v100-32gb", "Tesla V100-SXM2-32GB", r"\bv100s?\b", (7, 0), 32_768, 310, 80),
    _gpu("t4-16gb", "Tesla T4", r"\bt4\b", (7, 5), 15_360, 300, 40),
    _gpu("a10g-24gb", "NVIDIA A10G", r"\ba10g\b", (8, 6), 23_028, 380, 80),
    _gpu("rtx3090-24gb", "NVIDIA GeForce RTX 3090", r"\brtx ?3090\b", (8, 6), 24_576, 350, 82),
    _gpu("rtx4090-24gb", "NVIDIA GeForce RTX 4090", r"\brtx ?4090\b", (8, 9), 24_564, 380, 128),
    _gpu("l4-24gb", "NVIDIA L4", r"\bl4\b", (8, 9), 23_034, 380, 58),
    _gpu("a6000-48gb", "NVIDIA RTX A6000", r"\ba6000\b", (8, 6), 49_140, 380, 84),
    _gpu("a100-40gb", "NVIDIA A100-SXM4-40GB", r"\ba100\b", (8, 0), 40_960, 420, 108),
    _gpu("a100-80gb", "NVIDIA A100-SXM4-80GB", r"\ba100\b", (8, 0), 81_920, 420, 108),
    _gpu("h100-80gb", "NVIDIA H100 80GB HBM3", r"\bh100\b", (9, 0), 81_559, 520, 132, cudnn=True),
    _gpu("h200-141gb", "NVIDIA H200", r"\bh200\b", (9, 0), 143_771, 520, 132, cudnn=True),
)}
DEFAULT_GPU = "a100-80gb"
UNKNOWN_GPU_CONTEXT = 512 * MiB  # a measured GPU the table lacks: a typical context, until NVML measures it


def names() -> list[str]:
    return list(GPUS)


def get(name: str | GpuSpec) -> GpuSpec:
    """The table entry `name` (a GpuSpec passes through: a GPU that is not in the table)."""
    if isinstance(name, GpuSpec):
        return name
    key = str(name).strip().lower()
    if key not in GPUS:
        raise UserError(f"unknown GPU {name!r}; known GPUs: {', '.join(GPUS)}")
    return GPUS[key]


def match_device_name(device_name: str, memory_bytes: int | None = None,
                      capability: tuple[int, int] | None = None) -> GpuSpec | None:
    """The table entry for a real device (`torch.cuda.get_device_name()`), or None.

    The rows whose `pattern` finds the device's model; of those, the ones of its compute capability
    (when given), and where a model comes in several sizes the closest memory (none given: the
    largest row, the table's last)."""
    cands = [g for g in GPUS.values() if g.names_device(device_name)
             and (capability is None or (g.major, g.minor) == tuple(capability))]
    if not cands:
        return None
    if memory_bytes is None:
        return cands[-1]
    return min(cands, key=lambda g: abs(g.memory_bytes - memory_bytes))
