"""Bottleneck adapters: Houlsby (after attention and after the FFN) and Pfeiffer (after the FFN only).

Each adapter is a residual bottleneck (`membench.methods._bottleneck.Bottleneck`)
applied to the output of a family hook module, before the layer's own residual
add and LayerNorm:

    out = M(x)                     M = family.attn_out(layer) or family.ffn_out(layer)
    out = out + W_up drop(act(W_down out))

It runs as a forward hook on M, so the backbone's code and module names stay
as they are, the same way in every family; the adapter module itself is
registered on the layer (`<layer>.houlsby_attn`, `<layer>.houlsby_ffn`,
`<layer>.pfeiffer_ffn`), so profilers charge it to its layer.

`init="zero"` (default): W_up = 0, the model's output at initialisation is the
base model's, bit for bit. `init="normal"`: W_down, W_up ~ N(0, std^2)
(std 0.02, as in the MEFT paper); the starting point moves a little.
The base is frozen; for classification backbones the new task head trains too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from . import register
from .base import (
    Method,
    MethodConfig,
    neighbour,
    require_fraction,
    require_non_negative,
    require_positive_int,
)
from .trainable import among, either, nothing, task_head


class AdapterHook:
    """Forward hook that passes a module's output through a residual adapter."""

    def __init__(self, adapter):
        self.adapter = adapter

    def __call__(self, module, args, output):
        if isinstance(output, tuple):
            return (self.adapter(output[0]),) + output[1:]
        return self.adapter(output)


@dataclass
class AdapterOptions(MethodConfig):
    r: int = 64  # bottleneck width
    activation: str = "relu"
    dropout: float = 0.0
    init: str = "zero"  # "zero": W_up = 0 (exact starting point) | "normal": N(0, std^2)
    std: float = 0.02
    train_head: bool = True  # classification backbones: train the new task head

    def check(self, method):
        require_positive_int(method, "r", self.r, "the bottleneck width")
        require_fraction(method, "dropout", self.dropout)
        require_non_negative(method, "std", self.std)  # the normal init's standard deviation
        if self.init not in ("zero", "normal"):
            raise UserError(f"option {method}.init={self.init!r}: allowed: zero, normal", field=("option", "init"))


class _BottleneckAdapters(Method):
    sites: tuple[str, ...] = ()  # family hook points: "attn_out", "ffn_out"
    Config = AdapterOptions

    def apply(self, model, family, cfg: AdapterOptions):
        from transformers.activations import ACT2FN

        from ._bottleneck import Bottleneck, BottleneckShape

        if cfg.activation not in ACT2FN:
            raise UserError(f"option {self.name}.activation={cfg.activation!r}: allowed: "
                            + ", ".join(sorted(ACT2FN)))
        d = family.hidden_size(model.config)
        shape = BottleneckShape(cfg.r, cfg.activation, cfg.dropout, cfg.init, cfg.std, residual=True)
        for layers in family.stacks(model).values():
            for layer in layers:
                for site in self.sites:
                    target = getattr(family, site)(layer)
                    device, dtype = neighbour(target)
                    adapter = Bottleneck(d, shape, device=device, dtype=dtype)
                    layer.add_module(self._adapter_name(site), adapter)
                    target.register_forward_hook(AdapterHook(adapter))
        return model

    def trainable(self, model, family, cfg: AdapterOptions):
        adapters = [getattr(layer, self._adapter_name(site)) for layers in family.stacks(model).values()
                    for layer in layers for site in self.sites]
        head = task_head(model, family) if cfg.train_head else nothing
        return either(among(p for adapter in adapters for p in adapter.parameters()), head)

    def _adapter_name(self, site: str) -> str:
        """Where the adapter of a hook point lives on its layer: houlsby_attn, houlsby_ffn, pfeiffer_ffn."""
        return f"{self.name}_{site.split('_')[0]}"


@register
class Houlsby(_BottleneckAdapters):
    name = "houlsby"
    summary = "Houlsby adapters: residual bottleneck after attention and after the FFN, base frozen"
    sites = ("attn_out", "ffn_out")


@register
class Pfeiffer(_BottleneckAdapters):
    name = "pfeiffer"
    summary = "Pfeiffer adapters: residual bottleneck after the FFN only, base frozen"
    sites = ("ffn_out",)
