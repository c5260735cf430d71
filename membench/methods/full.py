"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from . import register, trainable
from .base import Method


@register
class Full(Method):
    name = "full"
    summary = "full fine-tuning: every parameter trains"

    def apply(self, model, family, cfg):
        return model

    def trainable(self, model, family, cfg):
        return trainable.everything
