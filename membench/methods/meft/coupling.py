"""F and G of one MEFT layer, built from the family's blocks and bottleneck adapters.

    MEFT1   F = PLM layer (adapter parallel to its FFN)     G = adapter              swap
    MEFT2   F = adapter                                      G = PLM layer (+ adapter) swap
    MEFT3   F = attention block (adapter after its output    G = FFN block (adapter   no swap
            projection: o + A(o))                                parallel to the FFN)

The PLM layer is `family.ffn_block(layer, family.attention_block(layer, x, ...))`.
Adapters that sit inside the PLM layer are attached with forward hooks on the
family's hook points (`ffn_in` input -> adapter -> added to `ffn_out` output;
`attn_out` output o -> o + adapter(o)). The hooks find their adapter through
an `_meft_owner` attribute (deep copies stay consistent) and are inactive while
the owner's `meft_on` is False (the unmodified pre-trained model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._bottleneck import Bottleneck, BottleneckShape
from ..base import neighbour


@dataclass(frozen=True)
class Variant:
    """One MEFT variant as data: what F and G are, the scales, the swap, where its adapters sit.

    F and G are (head, tail) piece names: y = tail(head(x)), the tail token-wise (so it can run
    over sequence chunks, `ffn_chunks`), None = identity. Pieces: "_attn" (attention block),
    "_ffn" (FFN block), "_adapter" (the variant's bottleneck adapter)."""

    name: str
    F: tuple[str | None, str | None]
    G: tuple[str | None, str | None]
    lam: float  # the paper's scale of the first stream
    beta: float  # and of the second
    swap: bool  # streams swap after each layer
    attn_adapter: bool  # an adapter after the attention's output projection (o + A(o)); else a plain adapter
    plm_reads_y1: bool  # the PLM layer reads y1 (MEFT2: it is G) rather than x2
    plm_stream: int  # which output stream carries the PLM layers' outputs at the top (0 or 1)


VARIANTS = {v.name: v for v in (
    Variant("meft1", F=("_attn", "_ffn"), G=(None, "_adapter"), lam=0.1, beta=1.0, swap=True,
            attn_adapter=False, plm_reads_y1=False, plm_stream=1),
    Variant("meft2", F=(None, "_adapter"), G=("_attn", "_ffn"), lam=1.0, beta=0.1, swap=True,
            attn_adapter=False, plm_reads_y1=True, plm_stream=0),
    Variant("meft3", F=("_attn", None), G=(None, "_ffn"), lam=0.1, beta=0.1, swap=False,
            attn_adapter=True, plm_reads_y1=False, plm_stream=1),
)}


def _owner(mod):
    owner = mod.__dict__.get("_meft_owner")
    return owner if owner is not None and owner.meft_on else None


def _ffn_pre(mod, args):
    owner = _owner(mod)
    if owner is not None:
        owner._ffn_x = args[0]


def _ffn_post(mod, args, out):
    owner = _owner(mod)
    if owner is None:
        return None
    x, owner._ffn_x = owner._ffn_x, None
    return out + owner.ffn_adapter(x)


def _attn_post(mod, args, out):
    owner = _owner(mod)
    if owner is None:
        return None
    if isinstance(out, tuple):  # some projections return (output, bias)
        return (out[0] + owner.attn_adapter(out[0]),) + tuple(out[1:])
    return out + owner.attn_adapter(out)


class BlockCall(nn.Module):
    """Runs F or G as a module call, so profilers' module hooks charge what the family's
    block code saves outside submodules (functional dropout, residual adds) to this layer,
    in forward and in the recompute alike."""

    def forward(self, fn, x, args, kwargs, compute_dtype):
        return fn(x.to(compute_dtype), args, kwargs).to(x.dtype)


def attach_adapters(shim: nn.Module, family, variant: str, d: int, shape: BottleneckShape) -> None:
    """Create the variant's adapters on `shim` (device/dtype of the layer) and hook the in-layer ones."""
    layer = shim.layer
    device, dtype = neighbour(layer)
    make = lambda: Bottleneck(d, shape, device=device, dtype=dtype)  # noqa: E731
    shim.ffn_adapter = make()
    ffn_in, ffn_out = family.ffn_in(layer), family.ffn_out(layer)
    for m in (ffn_in, ffn_out):
        object.__setattr__(m, "_meft_owner", shim)
    shim._hooks.append(ffn_in.register_forward_pre_hook(_ffn_pre))
    shim._hooks.append(ffn_out.register_forward_hook(_ffn_post))
    if VARIANTS[variant].attn_adapter:
        shim.attn_adapter = make()
        attn = family.attn_out(layer)
        object.__setattr__(attn, "_meft_owner", shim)
        shim._hooks.append(attn.register_forward_hook(_attn_post))
    else:
        shim.adapter = make()


SEQ_DIM = -2  # hidden states are [batch, sequence, width]


class Coupling:
    """F, G, lam, beta and the swap of one layer; F/G take (x, args, kwargs) as the HF stack passed them.

    With `chunks` > 1 the token-wise tail of F and G runs over that many chunks of the sequence
    (forward, plain autograd and the reversible recompute alike, so dropout draws the same masks
    in the same order)."""

    def __init__(self, shim, family, variant: str, lam: float, beta: float, chunks: int = 1):
        self.shim, self.family = shim, family
        self.variant = VARIANTS[variant]
        self.lam, self.beta, self.swap = lam, beta, self.variant.swap
        self.chunks = chunks
        self._pieces = {"F": self.variant.F, "G": self.variant.G}

    # the pieces (the PLM layer is _ffn(_attn(x)))
    def _attn(self, x, args, kwargs):
        return self.family.attention_block(self.shim.layer, x, *args, **kwargs)

    def _ffn(self, x, args, kwargs):
        return self.family.ffn_block(self.shim.layer, x)

    def _adapter(self, x, args, kwargs):
        return self.shim.adapter(x)

    def F(self, x, args, kwargs, compute_dtype):
        return self._run("F", x, args, kwargs, compute_dtype)

    def G(self, x, args, kwargs, compute_dtype):
        return self._run("G", x, args, kwargs, compute_dtype)

    def _whole(self, which: str):
        """F or G as one function of (x, args, kwargs): tail(head(x))."""
        head, tail = self._pieces[which]
        if head is None:
            return getattr(self, tail)
        if tail is None:
            return getattr(self, head)
        h, t = getattr(self, head), getattr(self, tail)
        return lambda x, args, kwargs: t(h(x, args, kwargs), args, kwargs)

    def _run(self, which, x, args, kwargs, compute_dtype):
        if self.chunked(which):
            return self._in_chunks(which, x, args, kwargs, compute_dtype)
        return self.shim.block(self._whole(which), x, args, kwargs, compute_dtype)

    # ---- sequence chunks of the token-wise tail -----------------------------------------------------------
    def chunked(self, which: str) -> bool:
        return self.chunks > 1 and self._pieces[which][1] is not None

    def head(self, which: str):
        """F's or G's part before its token-wise tail, as a block call (None: there is none)."""
        name = self._pieces[which][0]
        return None if name is None else (lambda x, a, k, dt: self.shim.block(getattr(self, name), x, a, k, dt))

    def tail(self, which: str):
        name = self._pieces[which][1]
        return lambda x, a, k, dt: self.shim.block(getattr(self, name), x, a, k, dt)

    def split(self, x):
        """The chunks of `x` along the sequence, one at a time, each contiguous (a strided chunk would
        send every Linear to a batched matmul per sequence, several times slower)."""
        return (c.contiguous() for c in x.tensor_split(self.chunks, dim=SEQ_DIM))

    def _in_chunks(self, which, x, args, kwargs, compute_dtype):
        head, tail = self.head(which), self.tail(which)
        z = head(x, args, kwargs, compute_dtype) if head is not None else x
        return torch.cat([tail(zc, args, kwargs, compute_dtype) for zc in self.split(z)], dim=SEQ_DIM)

    def plm_input_of(self, x2, y1):
        """Which tensor the PLM layer (or its attention block) reads in this layer."""
        return y1 if self.variant.plm_reads_y1 else x2

    def step(self, x1, x2, args, kwargs, compute_dtype, trace=None):
        """Plain-autograd forward of the coupling (also the eval / no-grad path)."""
        if trace is not None and not self.variant.plm_reads_y1:
            trace.append(x2.detach().clone())
        y1 = self.lam * x1 + self.F(x2, args, kwargs, compute_dtype)
        if trace is not None and self.variant.plm_reads_y1:
            trace.append(y1.detach().clone())
        y2 = self.beta * x2 + self.G(y1, args, kwargs, compute_dtype)
        return (y2, y1) if self.swap else (y1, y2)

    def params(self) -> list[torch.Tensor]:
        return [p for p in self.shim.parameters() if p.requires_grad and p is not getattr(
            getattr(self.shim, "merge", None), "weight", None) and p is not getattr(
            getattr(self.shim, "merge", None), "bias", None)]
