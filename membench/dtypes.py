"""Dtype names as users type them, and what each device can run."""

from __future__ import annotations

from .errors import UserError

# canonical name -> torch attribute name
_ALIASES = {
    "fp32": "float32", "float32": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "fp64": "float64", "float64": "float64", "double": "float64",
}
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}
ALLOWED = "fp32/float32, bf16/bfloat16, fp16/float16, fp64/float64"


def canonical(name: str) -> str:
    """'bf16' -> 'bfloat16'; raises UserError for anything else."""
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise UserError(f"unknown dtype {name!r}; allowed: {ALLOWED}")
    return _ALIASES[key]


def short(name: str) -> str:
    return SHORT[canonical(name)]


def to_torch(name: str):
    import torch

    return getattr(torch, canonical(name))


def check_device_supports(dtype: str, device: str) -> None:
    """Raise UserError when `device` cannot train in `dtype`."""
    dt = canonical(dtype)
    if device == "cuda":
        import torch

        if dt == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise UserError(f"this GPU ({torch.cuda.get_device_name()}) cannot run bf16; use fp16 or fp32")
