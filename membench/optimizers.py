"""The optimizer of a profiled step, run the way the target device runs it.

PyTorch picks AdamW's implementation by where the tensors live: a for-loop over
the parameters on CPU tensors, `foreach` (list-wide kernels, one temporary per
parameter at once) on CUDA tensors. On a GPU, `step` counters stay in host memory
unless the implementation is fused (or capturable).
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import UserError

OPTIMIZERS = {
    "adamw": "AdamW as the target runs it (CUDA: foreach, CPU: for-loop)",
    "adamw-foreach": "AdamW, foreach implementation",
    "adamw-fused": "AdamW, fused kernel (state and step counters on the device)",
    "adamw-forloop": "AdamW, for-loop implementation",
    "sgd": "plain SGD, no momentum (no optimizer state)",
}
LR = 1e-4


def check(name: str) -> str:
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    return name


def implementation(name: str, target: str) -> str:
    """'adamw' on target 'cuda' -> 'adamw-foreach'; other names are already explicit."""
    check(name)
    if name == "adamw":
        return "adamw-foreach" if target == "cuda" else "adamw-forloop"
    return name


def factory(name: str, target: str) -> Callable:
    """params -> the optimizer `name` as the target runs it."""
    import torch

    impl = implementation(name, target)
    if impl == "sgd":
        return lambda params: torch.optim.SGD(params, lr=LR)
    kw = {"adamw-foreach": {"foreach": True}, "adamw-fused": {"fused": True}, "adamw-forloop": {"foreach": False}}
    return lambda params: torch.optim.AdamW(params, lr=LR, **kw[impl])


def host_state(optimizer) -> list:
    """State tensors a GPU keeps in host memory: AdamW's step counters, unless fused or capturable."""
    out = []
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("capturable"):
            continue
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if step is not None and hasattr(step, "untyped_storage"):
                out.append(step)
    return out
