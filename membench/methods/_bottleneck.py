"""The bottleneck adapter shared by Houlsby/Pfeiffer adapters and MEFT.

    y = W_up · drop(act(W_down · x))            (+ x when residual=True)

`init="normal"`: W_down, W_up ~ N(0, std^2) (std 0.02: the MEFT paper); `init="zero"`:
W_up = 0, so a residual adapter is exactly the identity at start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN


@dataclass(frozen=True)
class BottleneckShape:
    """What an adapter is, apart from its width d and where it is created."""

    r: int  # bottleneck width
    activation: str = "relu"
    dropout: float = 0.0  # after the activation
    init: str = "normal"  # "normal": N(0, std^2) | "zero": W_up = 0
    std: float = 0.02
    residual: bool = False  # y + x


class Bottleneck(nn.Module):
    def __init__(self, d: int, shape: BottleneckShape, device=None, dtype=None):
        super().__init__()
        if shape.r <= 0:
            raise ValueError(f"adapter rank must be positive, got {shape.r}")
        if shape.init not in ("normal", "zero"):
            raise ValueError(f"adapter init must be 'normal' or 'zero', got {shape.init!r}")
        self.down = nn.Linear(d, shape.r, device=device, dtype=dtype)
        self.up = nn.Linear(shape.r, d, device=device, dtype=dtype)
        self.act = ACT2FN[shape.activation]
        self.drop = nn.Dropout(shape.dropout)
        self.residual = shape.residual
        with torch.no_grad():
            nn.init.normal_(self.down.weight, std=shape.std)
            nn.init.zeros_(self.down.bias)
            if shape.init == "zero":
                nn.init.zeros_(self.up.weight)
            else:
                nn.init.normal_(self.up.weight, std=shape.std)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.drop(self.act(self.down(x))))
        return x + y if self.residual else y
