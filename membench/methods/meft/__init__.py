"""MEFT (Liao, Tan, Monz, NeurIPS 2023): reversible fine-tuning of a pre-trained model.

Three registered methods, `meft1`, `meft2`, `meft3` (options: `MeftOptions`).
See docs/meft.md, and `membench verify` for the numerical check.
"""

from __future__ import annotations

import dataclasses

from .. import register
from ..base import Method
from ..trainable import among, either, task_head
from .config import MeftOptions
from .inject import install, plain_autograd, pretrained_mode, stacks_of, tracing


class _Meft(Method):
    Config = MeftOptions
    reversible = True

    def defaults(self, family):
        return {"variant": self.name}

    def make_config(self, family, options=None):
        """The options with per-variant defaults filled in (lam, beta, r), so results record real values."""
        cfg = super().make_config(family, options)
        return dataclasses.replace(cfg, variant=self.name).resolved(family)

    def apply(self, model, family, cfg: MeftOptions):
        opts = dataclasses.replace(cfg, variant=self.name).resolved(family)
        config = getattr(model, "config", None)
        for key in ("layerdrop", "encoder_layerdrop", "decoder_layerdrop"):
            if (getattr(config, key, 0.0) or 0.0) > 0:
                from ...errors import UserError

                raise UserError(f"{self.name}: {key}={getattr(config, key)} would skip layers of a reversible "
                                f"stack; set --override {key}=0")
        install(model, family, opts)
        return model

    def trainable(self, model, family, cfg):
        """The adapters (and a merge layer) on the shims, not the PLM layers they wrap; a classifier's head."""
        added = [p for stack in stacks_of(model) for shim in stack.shims
                 for name, p in shim.named_parameters() if not name.startswith("layer.")]
        return either(among(added), task_head(model, family))


@register
class Meft1(_Meft):
    name = "meft1"
    summary = "MEFT1 reversible: F = PLM layer (+ FFN-parallel adapter), G = adapter; lam 0.1, beta 1"


@register
class Meft2(_Meft):
    name = "meft2"
    summary = "MEFT2 reversible: F = adapter, G = PLM layer (+ FFN-parallel adapter); lam 1, beta 0.1"


@register
class Meft3(_Meft):
    name = "meft3"
    summary = "MEFT3 reversible: F = attention block (+ adapter), G = FFN block (+ adapter); lam = beta = 0.1"


__all__ = ["MeftOptions", "install", "plain_autograd", "pretrained_mode", "stacks_of", "tracing"]
