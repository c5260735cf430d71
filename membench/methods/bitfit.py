"""BitFit (Ben Zaken et al. 2022): only the bias terms train, everything else is frozen.

Every parameter named `*.bias` trains (attention, FFN and LayerNorm biases);
for classification backbones the new task head trains too. Backbones without
biases (Llama: `attention_bias`, `mlp_bias` are false; `Family.bias_switches`)
have nothing to train: that is an error, not a silent run of the head alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from . import register
from .base import Method, MethodConfig
from .trainable import among, either, nothing, task_head


@dataclass
class BitFitOptions(MethodConfig):
    norms: bool = True  # LayerNorm biases train too (the BitFit paper trains every bias)
    train_head: bool = True  # classification backbones: train the new task head


def _is_norm(module) -> bool:
    from torch import nn

    return isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()


def biases(model, norms: bool) -> list:
    """The model's bias terms (a normalisation's too, if `norms`)."""
    return [p for mod in model.modules() if norms or not _is_norm(mod)
            for name, p in mod.named_parameters(recurse=False) if name == "bias"]


@register
class BitFit(Method):
    name = "bitfit"
    summary = "BitFit: only bias terms train (plus a classification head)"
    Config = BitFitOptions

    def apply(self, model, family, cfg: BitFitOptions):
        if not biases(model, cfg.norms):
            switches = " ".join(f"--override {key}=true" for key in family.bias_switches)
            raise UserError(f"bitfit: {family.name} has no bias terms to train; pick another method"
                            + (f" or build it with biases ({switches})" if switches else ""))
        return model

    def trainable(self, model, family, cfg: BitFitOptions):
        return either(among(biases(model, cfg.norms)), task_head(model, family) if cfg.train_head else nothing)
