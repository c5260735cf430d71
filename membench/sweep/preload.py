"""Imported once by the forkserver that forks every run: the heavy imports, no CUDA.

Each run is still its own process (forked from this server, which never touches
CUDA, so each run gets a fresh CUDA context and its own allocator peaks), but it
does not pay the torch + transformers import again.
"""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# if anything here asks torch.cuda.is_available(), answer through NVML instead of initialising CUDA
# (a forked run cannot use CUDA once its parent initialised it)
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import contextlib

import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401

from .. import backbones, methods, runner  # noqa: E402,F401
from ..profilers import step  # noqa: E402,F401

for _mod in ("peft",) + tuple(f"membench.methods.{m}" for m in ("full", "lora")):
    try:  # noqa: SIM105 - method modules, not the registry's _load(): plugins load (and fail) in the run itself
        importlib.import_module(_mod)
    except Exception:  # noqa: BLE001
        pass

for _fam in backbones.FAMILIES.values():
    for _t in _fam.model_types:
        with contextlib.suppress(ImportError):
            importlib.import_module(f"transformers.models.{_t}.modeling_{_t}")
