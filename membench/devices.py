"""Where a run executes: cpu (measured), fake (no memory, predicted) or cuda (measured on the GPU here).

One rule for the default, used by the CLI, the sweep and the runner alike: cuda when this process can
run CUDA, else fake. Without an NVIDIA driver (Linux: /proc/driver/nvidia) the answer is known without
importing torch, so `membench sweep --dry-run` on a laptop stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEVICES = ("cpu", "fake", "cuda")


def default_device() -> str:
    if sys.platform.startswith("linux") and not Path("/proc/driver/nvidia/version").exists():
        return "fake"  # no driver: no CUDA, whatever build of torch is installed
    import torch

    return "cuda" if torch.cuda.is_available() else "fake"
