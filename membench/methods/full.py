"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from . import register
from .base import Method


@register
class Full(Method):
    name = "full"
    summary = "full fine-tuning: every parameter trains"

    def apply(self, model, family, cfg):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
