"""What a run's figures describe: the target device, and whether they were measured or predicted (no torch).

    --device cpu                      target cpu: measured CPU kernels
    --device fake  [--target cpu]     target cpu: CPU kernels' saved tensors, predicted exactly
    --device fake  (default)          target cuda on --gpu (default a100-80gb): CUDA kernels' saved
                                      tensors, exactly; allocator figures from the allocator model
    --device cuda                     target cuda: measured on the GPU it runs on
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UserError
from . import specs
from .allocator import AllocatorConfig

TARGETS = ("cpu", "cuda")


@dataclass(frozen=True)
class Target:
    kind: str  # "cpu" | "cuda"
    gpu: specs.GpuSpec | None = None  # the GPU predicted (fake) or measured on (cuda)
    measured: bool = False  # True: the figures come from the device itself
    alloc_conf: AllocatorConfig = AllocatorConfig()

    @property
    def predicts_cuda(self) -> bool:
        return self.kind == "cuda" and not self.measured

    @property
    def gpu_name(self) -> str | None:
        return self.gpu.name if self.gpu is not None else None

    def describe(self) -> str:
        if self.kind == "cpu":
            return "CPU kernels, measured" if self.measured else "CPU kernels (fake tensors, exact)"
        how = "measured" if self.measured else "predicted"
        return f"CUDA on {self.gpu_name}, {how}"


def env_alloc_conf() -> str:
    return os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")


def resolve(device: str, target: str | None = None, gpu: str | None = None, alloc_conf: str | None = None,
            real_gpu: specs.GpuSpec | None = None) -> Target:
    """The target of a run on `device` (cpu | fake | cuda), checking the combination.

    `real_gpu`: on device cuda, the spec of the GPU the run is on."""
    if target is not None and target not in TARGETS:
        raise UserError(f"unknown target {target!r}; allowed: {', '.join(TARGETS)}")
    if device == "cpu":
        if target == "cuda":
            raise UserError("--target cuda needs --device fake (a prediction) or --device cuda (a measurement)")
        if gpu or alloc_conf:
            raise UserError(f"{'--gpu' if gpu else '--alloc-conf'} names a CUDA setting; the CPU target has none")
        return Target("cpu", measured=True)
    if device == "cuda":
        if target == "cpu":
            raise UserError("--device cuda measures the GPU; for the CPU target use --device cpu or fake")
        if gpu:
            raise UserError("--device cuda measures the GPU it runs on; --gpu names a GPU to predict with "
                            "--device fake")
        if alloc_conf:
            raise UserError("--device cuda: set PYTORCH_CUDA_ALLOC_CONF before starting instead of --alloc-conf")
        return Target("cuda", real_gpu, measured=True, alloc_conf=_env_conf())
    if target == "cpu":
        if gpu or alloc_conf:
            raise UserError(f"{'--gpu' if gpu else '--alloc-conf'} needs --target cuda")
        return Target("cpu")
    spec = specs.get(gpu or specs.DEFAULT_GPU)
    conf = AllocatorConfig.parse(alloc_conf) if alloc_conf is not None else _env_conf()
    return Target("cuda", spec, alloc_conf=conf)


def _env_conf() -> AllocatorConfig:
    """PYTORCH_CUDA_ALLOC_CONF as the real allocator reads it (keys the model does not know are ignored)."""
    keep = [item for item in env_alloc_conf().split(",") if item.split(":")[0].strip() in AllocatorConfig.KEYS]
    try:
        return AllocatorConfig.parse(",".join(keep))
    except UserError as exc:
        raise UserError(f"PYTORCH_CUDA_ALLOC_CONF: {exc}") from None
