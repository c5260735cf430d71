"""membench: how much memory fine-tuning a transformer really costs, layer by layer.

Python API (torch is imported when `profile` or `profile_module` is first used, not by
`import membench`):

    from membench import profile, profile_module
    result = profile("opt-1.3b", "lora", batch_size=8, seq_len=512, dtype="bf16", device="fake")
    result.activation_bytes, result.layers, result.to_json()
"""

from __future__ import annotations

from .errors import UserError
from .result import LayerRow, RunResult

__version__ = "0.1.0"
__all__ = ["profile", "profile_module", "RunResult", "LayerRow", "UserError", "__version__"]

_LAZY = {"profile": "runner", "profile_module": "runner"}


def __getattr__(name: str):
    """`membench.profile` / `profile_module` are the runner's functions themselves (their real signatures
    and docstrings for help()), imported on first use so that `import membench` stays torch-free."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'membench' has no attribute {name!r}")
