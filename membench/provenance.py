"""Where a number came from: package versions, device, git revision, time."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def provenance(device: str | None = None) -> dict:
    """Where a number came from: versions, device, git revision, time, host and process.

    The one provenance record of membench: the runner stamps every result with it and the sweep worker
    every record (a failed run's too, before torch may have loaded: then torch's version comes from the
    installed package and the CUDA fields stay empty)."""
    import os
    import socket
    import sys

    torch = sys.modules.get("torch")
    info = {
        "membench": _version("membench"),
        "torch": torch.__version__ if torch is not None else _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch is not None else None,
        "device_name": platform.processor() or platform.machine(),
        "git_revision": git_revision(),
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }
    from .backends import device_name

    info["device_name"] = device_name(device) or info["device_name"]  # a GPU's, or what a fake run is
    return info
