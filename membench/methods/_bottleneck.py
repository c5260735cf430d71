"""The bottleneck adapter shared by Houlsby/Pfeiffer adapters and MEFT.

    y = W_up · drop(act(W_down · x))            (+ x when residual=True)

`init="normal"`: W_down, W_up ~ N(0, 0.02^2) (the MEFT paper); `init="zero"`:
W_up = 0, so a residual adapter is exactly the identity at start.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class Bottleneck(nn.Module):
    def __init__(self, d: int, r: int, activation: str = "relu", dropout: float = 0.0, residual: bool = False,
                 init: str = "normal", std: float = 0.02, device=None, dtype=None):
        super().__init__()
        if r <= 0:
            raise ValueError(f"adapter rank must be positive, got {r}")
        if init not in ("normal", "zero"):
            raise ValueError(f"adapter init must be 'normal' or 'zero', got {init!r}")
        self.down = nn.Linear(d, r, device=device, dtype=dtype)
        self.up = nn.Linear(r, d, device=device, dtype=dtype)
        self.act = ACT2FN[activation]
        self.drop = nn.Dropout(dropout)
        self.residual = residual
        with torch.no_grad():
            nn.init.normal_(self.down.weight, std=std)
            nn.init.zeros_(self.down.bias)
            if init == "zero":
                nn.init.zeros_(self.up.weight)
            else:
                nn.init.normal_(self.up.weight, std=std)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.drop(self.act(self.down(x))))
        return x + y if self.residual else y
