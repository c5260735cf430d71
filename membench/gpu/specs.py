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

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def cublas_workspace_bytes(self) -> int:
        return cublas_workspace_bytes(self.major, self.minor)

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "compute_capability": self.compute_capability,
                "memory_bytes": self.memory_bytes, "context_bytes": self.context_bytes,
                "cublas_workspace_bytes": self.cublas_workspace_bytes,
                "prefers_cudnn_sdpa": self.prefers_cudnn_sdpa}


def _gpu(name, label, cc, memory_mib, context_mib, cudnn=False) -> GpuSpec:
    major, minor = cc
    return GpuSpec(name, label, major, minor, memory_mib * MiB, context_mib * MiB, cudnn)


GPUS: dict[str, GpuSpec] = {g.name: g for g in (
    _gpu("v100-32gb", "Tesla V100-SXM2-32GB", (7, 0), 32_768, 310),
    _gpu("a10g-24gb", "NVIDIA A10G", (8, 6), 23_028, 380),
    _gpu("rtx3090-24gb", "NVIDIA GeForce RTX 3090", (8, 6), 24_576, 350),
    _gpu("rtx4090-24gb", "NVIDIA GeForce RTX 4090", (8, 9), 24_564, 380),
    _gpu("l4-24gb", "NVIDIA L4", (8, 9), 23_034, 380),
    _gpu("a6000-48gb", "NVIDIA RTX A6000", (8, 6), 49_140, 380),
    _gpu("a100-40gb", "NVIDIA A100-SXM4-40GB", (8, 0), 40_960, 420),
    _gpu("a100-80gb", "NVIDIA A100-SXM4-80GB", (8, 0), 81_920, 420),
    _gpu("h100-80gb", "NVIDIA H100 80GB HBM3", (9, 0), 81_559, 520, cudnn=True),
    _gpu("h200-141gb", "NVIDIA H200", (9, 0), 143_771, 520, cudnn=True),
)}
DEFAULT_GPU = "a100-80gb"


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


def match_device_name(device_name: str, memory_bytes: int | None = None) -> GpuSpec | None:
    """The table entry for a real device (`torch.cuda.get_device_name()`), or None.

    Matched on the model in the name (A100, H100...) and, where a model comes in
    several sizes, the closest memory."""
    low = device_name.lower().replace(" ", "").replace("-", "")
    tags = {"v100": "v100", "a10g": "a10g", "3090": "rtx3090", "4090": "rtx4090", "l4": "l4", "a6000": "a6000",
            "a100": "a100", "h100": "h100", "h200": "h200"}
    family = next((tag for key, tag in tags.items() if key in low and not (key == "l4" and "l40" in low)), None)
    if family is None:
        return None
    cands = [g for g in GPUS.values() if g.name.replace("-", "").startswith(family)]
    if not cands:
        return None
    if memory_bytes is None:
        return cands[-1]
    return min(cands, key=lambda g: abs(g.memory_bytes - memory_bytes))
