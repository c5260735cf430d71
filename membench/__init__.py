"""membench: how much memory fine-tuning a transformer really costs, layer by layer.

Python API (imports torch lazily):

    from membench import profile, profile_module
    result = profile("opt-1.3b", "lora", batch_size=8, seq_len=512, dtype="bf16", device="fake")
    result.activation_bytes, result.layers, result.to_json()
"""

from __future__ import annotations

from .errors import UserError
from .result import LayerRow, RunResult

__version__ = "0.1.0"
__all__ = ["profile", "profile_module", "RunResult", "LayerRow", "UserError", "__version__"]


def profile(*args, **kwargs) -> RunResult:
    """Profile one training step of a registered backbone with a registered method (see runner.profile)."""
    from .runner import profile as _profile

    return _profile(*args, **kwargs)


def profile_module(*args, **kwargs) -> RunResult:
    """Profile one training step of any nn.Module on a batch you give (see runner.profile_module)."""
    from .runner import profile_module as _profile_module

    return _profile_module(*args, **kwargs)
