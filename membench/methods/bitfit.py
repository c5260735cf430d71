"""BitFit (Ben Zaken et al. 2022): only the bias terms train, everything else is frozen.

Every parameter named `*.bias` trains (attention, FFN and LayerNorm biases);
for classification backbones the new task head trains too. Backbones without
biases (Llama: `attention_bias`, `mlp_bias` are false) have nothing to train:
that is an error, not a silent run of the head alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from . import register
from ._heads import train_task_head
from .base import Method, MethodConfig


@dataclass
class BitFitOptions(MethodConfig):
    norms: bool = True  # LayerNorm biases train too (the BitFit paper trains every bias)
    train_head: bool = True  # classification backbones: train the new task head


@register
class BitFit(Method):
    name = "bitfit"
    summary = "BitFit: only bias terms train (plus a classification head)"
    Config = BitFitOptions

    def apply(self, model, family, cfg: BitFitOptions):
        from torch import nn

        norm_types = (nn.LayerNorm,)
        biases = 0
        for mod in model.modules():
            is_norm = isinstance(mod, norm_types) or "norm" in type(mod).__name__.lower()
            for name, p in mod.named_parameters(recurse=False):
                train = name == "bias" and (cfg.norms or not is_norm)
                p.requires_grad_(train)
                biases += train
        if not biases:
            raise UserError(f"bitfit: {family.name} has no bias terms to train; pick another method"
                            + (" or build it with biases (--override attention_bias=true --override mlp_bias=true)"
                               if family.name == "llama" else ""))
        if cfg.train_head:
            train_task_head(model, family)
        return model
