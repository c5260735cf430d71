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

import torch
from torch import nn

from ..bottleneck import Bottleneck

SWAP = {"meft1": True, "meft2": True, "meft3": False}


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


def attach_adapters(shim: nn.Module, family, variant: str, d: int, r: int, activation: str, dropout: float) -> None:
    """Create the variant's adapters on `shim` (device/dtype of the layer) and hook the in-layer ones."""
    layer = shim.layer
    ref = next(layer.parameters())
    make = lambda: Bottleneck(d, r, activation=activation, dropout=dropout, device=ref.device, dtype=ref.dtype)  # noqa: E731
    shim.ffn_adapter = make()
    ffn_in, ffn_out = family.ffn_in(layer), family.ffn_out(layer)
    for m in (ffn_in, ffn_out):
        object.__setattr__(m, "_meft_owner", shim)
    shim._hooks.append(ffn_in.register_forward_pre_hook(_ffn_pre))
    shim._hooks.append(ffn_out.register_forward_hook(_ffn_post))
    if variant == "meft3":
        shim.attn_adapter = make()
        attn = family.attn_out(layer)
        object.__setattr__(attn, "_meft_owner", shim)
        shim._hooks.append(attn.register_forward_hook(_attn_post))
    else:
        shim.adapter = make()


# Each of F and G as (head, token-wise tail): y = tail(head(x)), tail applied per token, so it can run
# over chunks of the sequence (`ffn_chunks`); None = identity.
PIECES = {"meft1": {"F": ("_attn", "_ffn"), "G": (None, "_adapter")},
          "meft2": {"F": (None, "_adapter"), "G": ("_attn", "_ffn")},
          "meft3": {"F": ("_attn", None), "G": (None, "_ffn")}}
SEQ_DIM = -2  # hidden states are [batch, sequence, width]


class Coupling:
    """F, G, lam, beta and the swap of one layer; F/G take (x, args, kwargs) as the HF stack passed them.

    With `chunks` > 1 the token-wise tail of F and G runs over that many chunks of the sequence
    (forward, plain autograd and the reversible recompute alike, so dropout draws the same masks
    in the same order)."""

    def __init__(self, shim, family, variant: str, lam: float, beta: float, chunks: int = 1):
        self.shim, self.family, self.variant = shim, family, variant
        self.lam, self.beta, self.swap = lam, beta, SWAP[variant]
        self.chunks = chunks

    # the pieces
    def _plm(self, x, args, kwargs):
        layer = self.shim.layer
        return self.family.ffn_block(layer, self.family.attention_block(layer, x, *args, **kwargs))

    def _attn(self, x, args, kwargs):
        return self.family.attention_block(self.shim.layer, x, *args, **kwargs)

    def _ffn(self, x, args, kwargs):
        return self.family.ffn_block(self.shim.layer, x)

    def _adapter(self, x, args, kwargs):
        return self.shim.adapter(x)

    def F(self, x, args, kwargs, compute_dtype):
        if self.chunked("F"):
            return self._in_chunks("F", x, args, kwargs, compute_dtype)
        fn = {"meft1": self._plm, "meft2": self._adapter, "meft3": self._attn}[self.variant]
        return self.shim.block(fn, x, args, kwargs, compute_dtype)

    def G(self, x, args, kwargs, compute_dtype):
        if self.chunked("G"):
            return self._in_chunks("G", x, args, kwargs, compute_dtype)
        fn = {"meft1": self._adapter, "meft2": self._plm, "meft3": self._ffn}[self.variant]
        return self.shim.block(fn, x, args, kwargs, compute_dtype)

    # ---- sequence chunks of the token-wise tail -----------------------------------------------------------
    def chunked(self, which: str) -> bool:
        return self.chunks > 1 and PIECES[self.variant][which][1] is not None

    def head(self, which: str):
        """F's or G's part before its token-wise tail, as a block call (None: there is none)."""
        name = PIECES[self.variant][which][0]
        return None if name is None else (lambda x, a, k, dt: self.shim.block(getattr(self, name), x, a, k, dt))

    def tail(self, which: str):
        name = PIECES[self.variant][which][1]
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
        return y1 if self.variant == "meft2" else x2

    def step(self, x1, x2, args, kwargs, compute_dtype, trace=None):
        """Plain-autograd forward of the coupling (also the eval / no-grad path)."""
        if trace is not None and self.variant != "meft2":
            trace.append(x2.detach().clone())
        y1 = self.lam * x1 + self.F(x2, args, kwargs, compute_dtype)
        if trace is not None and self.variant == "meft2":
            trace.append(y1.detach().clone())
        y2 = self.beta * x2 + self.G(y1, args, kwargs, compute_dtype)
        return (y2, y1) if self.swap else (y1, y2)

    def params(self) -> list[torch.Tensor]:
        return [p for p in self.shim.parameters() if p.requires_grad and p is not getattr(
            getattr(self.shim, "merge", None), "weight", None) and p is not getattr(
            getattr(self.shim, "merge", None), "bias", None)]
