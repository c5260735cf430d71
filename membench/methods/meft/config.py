"""Options of the MEFT methods (`--option key=value`).

Per variant, lam and beta default to the paper's values (coupling.VARIANTS, meft-notes section 2);
the adapter rank to 8 for encoder families and 64 for decoder families.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodConfig

OUTPUTS = ("auto", "mean", "scaled", "merge")
RECON_DTYPES = ("", "fp32", "fp64")


@dataclass
class MeftOptions(MethodConfig):
    """variant: meft1 | meft2 | meft3 (set by the method's name).

    lam, beta: the coupling scales  h1' = lam*h1 + F(h2);  h2' = beta*h2 + G(h1').
    r, dropout: bottleneck adapters (rank, dropout after the activation).
    reversible: how many of the adapted layers (from the bottom) run reversibly;
        -1 = all of them except `plain_top`; 0 = same architecture, plain autograd.
    frozen_bottom: bottom layers left as plain frozen PLM layers without adapters
        (the reference OPT layout: frozen_bottom=8, plain_top=8 on 24 layers).
    plain_top: adapted layers on top that run with plain autograd.
    output: how the two streams become one hidden state: mean (h1+h2)/2, scaled
        (s * other + PLM stream, s = `scale`), merge (trainable Linear(2d->d),
        initialised as `scaled`), auto = mean for encoder stacks, scaled for decoder stacks.
    checkpoint_every: keep the exact two streams at the input of every k-th
        reversible layer (k = 0: never), so reconstruction error cannot grow over
        more than k layers; costs two hidden states per checkpoint.
    recon_dtype: dtype the two streams are carried (and reconstructed) in; "" =
        the model's dtype; "fp64" makes reconstruction error negligible at the cost
        of saving the two final streams (and checkpoints) in fp64.
    ffn_chunks: run the token-wise part of each coupling (the FFN block with its
        parallel adapter, the bottleneck adapters) over k chunks of the sequence, in
        forward and in backward's recompute, so the recompute keeps one chunk's FFN
        intermediates at a time; 1 = whole sequences.
    """

    variant: str = "meft1"
    lam: float | None = None  # None: the variant's default
    beta: float | None = None
    r: int | None = None  # None: 8 for encoders, 64 for decoders
    dropout: float = 0.1
    reversible: int = -1
    frozen_bottom: int = 0
    plain_top: int = 0
    output: str = "auto"
    scale: float = 0.1
    checkpoint_every: int = 0
    recon_dtype: str = ""
    ffn_chunks: int = 1
    _restore_rng: bool = True  # private: False only for the negative-control test

    def resolved(self, family) -> MeftOptions:
        """A copy with every 'default' sentinel replaced and values checked."""
        from ...errors import UserError
        from .coupling import VARIANTS

        if self.variant not in VARIANTS:
            raise UserError(f"unknown MEFT variant {self.variant!r}; allowed: {', '.join(VARIANTS)}")
        lam0, beta0 = VARIANTS[self.variant].lam, VARIANTS[self.variant].beta
        for key in ("lam", "beta"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise UserError(f"option meft.{key}={value!r}: expected a number > 0")
        lam = lam0 if self.lam is None else float(self.lam)
        beta = beta0 if self.beta is None else float(self.beta)
        if lam <= 0 or beta <= 0:
            raise UserError(f"meft: lam and beta must be > 0 (the inverse divides by them), got lam={lam}, beta={beta}")
        r = (64 if family is not None and family.decoder else 8) if self.r is None else self.r
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise UserError(f"meft: adapter rank r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"meft: dropout must be in [0, 1), got {self.dropout}")
        if self.output not in OUTPUTS:
            raise UserError(f"meft: unknown output {self.output!r}; allowed: {', '.join(OUTPUTS)}")
        if self.recon_dtype not in RECON_DTYPES:
            raise UserError(f"meft: unknown recon_dtype {self.recon_dtype!r}; allowed: fp32, fp64 (or empty)")
        for key in ("frozen_bottom", "plain_top", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise UserError(f"meft: {key} must be >= 0, got {getattr(self, key)}")
        if self.ffn_chunks < 1:
            raise UserError(f"meft: ffn_chunks must be a positive integer (1 = whole sequences), got {self.ffn_chunks}")
        if self.reversible < -1:
            raise UserError(f"meft: reversible must be >= 0 (or -1 for all), got {self.reversible}")
        return MeftOptions(variant=self.variant, lam=lam, beta=beta, r=r, dropout=self.dropout,
                           reversible=self.reversible, frozen_bottom=self.frozen_bottom, plain_top=self.plain_top,
                           output=self.output, scale=self.scale, checkpoint_every=self.checkpoint_every,
                           recon_dtype=self.recon_dtype, ffn_chunks=self.ffn_chunks, _restore_rng=self._restore_rng)
