"""`ffn_chunks`: MEFT's token-wise recompute over chunks of the sequence: exact, replayed, and leaner."""

from __future__ import annotations

import pytest

from membench import profile
from membench.errors import UserError
from membench.methods.meft import stacks_of

from .meft_helpers import FAMILIES, VARIANTS, batch, both_ways, make, max_errors

BOUND = 1e-9
SEQ = 7  # divisible by neither 2 nor 3


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_parity_fp64_with_dropout(family, variant, chunks):
    """Reversible vs plain autograd (same architecture, same chunking, same seed) in float64 at
    lam = beta = 1, dropout on: the chunked recompute draws the forward's masks in its order."""
    model, fam, config = make(family, variant, 3, dropout=True,
                              options={"lam": 1.0, "beta": 1.0, "ffn_chunks": chunks})
    rev, plain = both_ways(model, batch(fam, config, s=SEQ))
    gerr, ierr = max_errors(rev, plain)
    assert gerr <= BOUND and ierr <= BOUND, (gerr, ierr)
    assert rev[0].item() == pytest.approx(plain[0].item(), rel=1e-12)


@pytest.mark.parametrize("family,variant", [("bert", "meft3"), ("opt", "meft1")])
def test_negative_control_chunking_the_recompute_alone_breaks_parity(family, variant):
    """If backward chunked differently from forward, dropout masks would not replay: the parity
    assertion above is not vacuous."""
    import torch

    model, fam, config = make(family, variant, 3, dropout=True, options={"lam": 1.0, "beta": 1.0, "ffn_chunks": 2})
    data = batch(fam, config, s=SEQ)
    _rev, plain = both_ways(model, data)
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(0)
    loss = model(**data).loss  # forward in 2 chunks
    for stack in stacks_of(model):
        for c in stack.couplings:
            c.chunks = 3  # the recompute in 3
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    gerr, _ierr = max_errors((loss, grads, plain[2]), plain)
    assert gerr > 1e-3


def test_option_is_checked_and_recorded():
    model, fam, config = make("bert", "meft3", 2, options={"ffn_chunks": 4})
    assert all(c.chunks == 4 for s in stacks_of(model) for c in s.couplings)
    with pytest.raises(UserError, match="ffn_chunks must be a positive integer"):
        make("bert", "meft3", 2, options={"ffn_chunks": 0})


def _peak(method, k, **kw):
    return profile("bert-base", method, batch_size=16, seq_len=512, dtype="fp32", device="fake",
                   method_options={"ffn_chunks": k}, **kw).peak_activation_bytes


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["meft1", "meft3"])
def test_bert_base_peak_drops_with_chunks(variant):
    """bert-base fp32 b16 s512 (CUDA target): the recompute's FFN intermediates shrink with k."""
    peaks = [_peak(variant, k, overrides={"num_hidden_layers": 3}) for k in (1, 2, 8)]
    assert peaks[0] > peaks[1] >= peaks[2]


@pytest.mark.slow
def test_bert_base_meft3_ffn_chunks_8_is_at_most_6_percent_of_full():
    """Issue 11's goal, on the CLI's default target (CUDA, A100 80GB), fake tensors, deterministic:
    MEFT3 with ffn_chunks=8 peaks at <= 0.06 of full fine-tuning's activation peak (bert-base fp32 b16
    s512). 0.059 measured: the four streams carried in place and the attention kernel's backward."""
    full = profile("bert-base", "full", batch_size=16, seq_len=512, dtype="fp32", device="fake").peak_activation_bytes
    meft3 = _peak("meft3", 8)
    assert meft3 <= 0.06 * full, f"{meft3 / 2**20:.1f} MiB = {meft3 / full:.4f} of full ({full / 2**20:.1f} MiB)"
