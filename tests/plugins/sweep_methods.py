"""Test-only method plugins for the sweep tests (tests/sweep/).

Load them in a sweep's run processes with `PYTHONPATH=tests/plugins MEMBENCH_PLUGINS=sweep_methods`.
Each is full fine-tuning whose forward misbehaves once the batch reaches an option's size:

- `oomtest`   raises torch.OutOfMemoryError (what CUDA raises) when batch >= at
- `hostoomtest` raises MemoryError (host out of memory) when batch >= at
- `crashtest` raises RuntimeError("injected crash") when batch >= at
- `hangtest`  sleeps `seconds` when batch >= at (for the per-run timeout)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from membench.methods import register
from membench.methods.base import Method, MethodConfig
from membench.methods.trainable import everything


@dataclass
class InjectOptions(MethodConfig):
    at: int = 2
    seconds: float = 120.0


class _Inject(Method):
    Config = InjectOptions

    def fail(self, cfg):  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, model, family, cfg):
        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and ids.shape[0] >= cfg.at:
                self.fail(cfg)

        model.register_forward_pre_hook(hook, with_kwargs=True)
        return model

    def trainable(self, model, family, cfg):
        return everything


@register
class OOMTest(_Inject):
    name = "oomtest"
    summary = "test only: torch.OutOfMemoryError at batch >= at"

    def fail(self, cfg):
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory (injected at batch >= {cfg.at})")


@register
class HostOOMTest(_Inject):
    name = "hostoomtest"
    summary = "test only: MemoryError at batch >= at"

    def fail(self, cfg):
        raise MemoryError(f"injected host out of memory at batch >= {cfg.at}")


@register
class CrashTest(_Inject):
    name = "crashtest"
    summary = "test only: RuntimeError at batch >= at"

    def fail(self, cfg):
        raise RuntimeError(f"injected crash at batch >= {cfg.at}")


@register
class HangTest(_Inject):
    name = "hangtest"
    summary = "test only: sleeps at batch >= at"

    def fail(self, cfg):
        time.sleep(cfg.seconds)
