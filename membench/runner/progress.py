"""What a long profile is doing: each phase, and layer i/N with the time left at the pace so far."""

from __future__ import annotations

import time
from collections.abc import Callable


class StepProgress:
    """What the step is doing, told to `say`: each phase, and layer i/N while layers run (forward, and
    backward through the layers that need a gradient), with the time left in the phase at the pace so far.

    Layers are seen by forward hooks and, for backward, a hook on each layer's output gradient; neither
    runs a tensor op or keeps a tensor, so the figures are the same with or without them. Layer lines come
    at most once a second (a 100 000-layer stack calls the hooks 100 000 times a pass), the last one always."""

    PHASES = {"forward": "forward", "backward": "backward", "optimizer": "optimizer step"}

    def __init__(self, say: Callable[[str], None], layers: list, steps: int):
        self.say, self.layers, self.steps = say, len(layers), steps
        self.label, self.expected, self.calls, self.with_grad = "", 0, 0, 0
        self.started = self.last = 0.0
        self.handles = [layer.register_forward_hook(self._forward_hook) for layer in layers]

    def phase(self, name: str) -> None:
        """profile_step's progress callback: a phase ("forward", "backward.2", ...) begins."""
        kind, _, nth = name.partition(".")
        self.label = self.PHASES.get(kind, kind)
        if self.steps > 1:
            self.label = f"step {nth or 1}/{self.steps} {self.label}"
        if kind == "forward":
            self.with_grad = 0
        self.expected = {"forward": self.layers, "backward": self.with_grad}.get(kind, 0)
        self.calls, self.started = 0, time.perf_counter()
        self.last = self.started
        self.say(self.label)

    def _forward_hook(self, module, args, output) -> None:
        out = _first_tensor(output)
        if out is not None and out.requires_grad:  # backward will pass through this layer
            self.with_grad += 1
            out.register_hook(self._backward_hook)
        self._layer_done()

    def _backward_hook(self, grad) -> None:
        self._layer_done()

    def _layer_done(self) -> None:
        self.calls += 1
        now = time.perf_counter()
        if not self.expected or self.calls > self.expected or (now - self.last < 1.0 and self.calls < self.expected):
            return
        self.last = now
        left = (now - self.started) / self.calls * (self.expected - self.calls)
        eta = f", ~{_duration(left)} left" if left >= 10 else ""
        self.say(f"{self.label}: layer {self.calls:,}/{self.expected:,}{eta}")

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _first_tensor(output):
    """A layer's output hidden state: the tensor itself, or the first tensor of its tuple / ModelOutput."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, tuple | list) else ()
    return next((v for v in values if isinstance(v, torch.Tensor)), None)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
