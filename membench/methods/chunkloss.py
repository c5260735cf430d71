"""The language-model loss without the logits, as a modifier: `full+chunkloss`, `meft3+chunkloss`, ...

A causal LM's loss materialises b x s x vocab logits, an fp32 copy and an fp32
log-softmax saved for backward: for opt-1.3b at b8 s512 that is 785 MiB per fp32
copy, more than MEFT leaves of the whole stack. Here the head runs a chunk of
tokens at a time, in one autograd Function:

    forward, per chunk c:   z_c = h_c W^T + b            (the model's dtype, then fp32)
                            lse_t = logsumexp(z_t)        loss += sum_t (lse_t - z_t[y_t])
                            keep lse (fp32, or fp64 for fp64 models; one per token); z_c is dropped
    loss = loss / n_kept                                  (tokens with y = -100 are not kept)

    backward, per chunk:    z_c recomputed,   g_t = (softmax(z_t) - onehot(y_t)) * dL / n_kept   (0 if ignored)
                            dh_c = g_c W       dW += g_c^T h_c (only if W trains)      db += sum_t g_t

Saved: the hidden states (the head's input, which the plain head saves too), the
labels and the logsumexp; one chunk's logits live at a time (`chunk` tokens x
vocab x 4 bytes; by default about 64 MiB). The causal shift is the one
transformers uses (labels padded with -100 and shifted left, the hidden states
untouched); seq2seq models (BART) predict their labels without a shift.

The LM's forward is wrapped on its instance (as `+ckpt` wraps layers): in training
with labels, the model's body runs as transformers wrote it and the chunked loss
replaces its head and loss; the output carries the loss and no logits. In eval
mode, or without labels, the original forward runs.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

from ..errors import UserError
from . import register
from .base import Method, MethodConfig, bad_option, unwrap_peft

IGNORE = -100
CHUNK_BYTES = 64 * 2**20  # one chunk's fp32 logits, by default


@dataclass
class ChunkLossOptions(MethodConfig):
    chunk: int | None = None  # tokens per chunk; default: one chunk's fp32 logits near 64 MiB

    def check(self, method):
        chunk = self.chunk  # (None: chosen from the vocabulary when the model is built)
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0):
            raise bad_option(method, "chunk", chunk, "expected a positive number of tokens")


def default_chunk(vocab_size: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab_size))


def _function():
    import torch

    def logits_of(h, weight, bias, extra):
        z = torch.nn.functional.linear(h, weight, bias)
        z = z + extra if extra is not None else z
        return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z  # fp32 at least, as transformers

    class ChunkedLMLoss(torch.autograd.Function):
        """loss = mean over kept tokens of cross_entropy(hidden @ weight^T + bias + extra, labels)."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, extra, labels, chunk):
            keep = labels != IGNORE
            target = labels.masked_fill(~keep, 0)
            acc = torch.promote_types(hidden.dtype, torch.float32)
            lse = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
            total = torch.zeros((), dtype=acc, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk):
                rows = slice(start, start + chunk)
                z = logits_of(hidden[rows], weight, bias, extra)
                lse[rows] = torch.logsumexp(z, dim=-1)
                picked = z.gather(1, target[rows, None]).squeeze(1)
                total += ((lse[rows] - picked) * keep[rows]).sum()
            count = keep.sum()
            ctx.chunk = chunk
            ctx.save_for_backward(hidden, weight, bias, extra, labels, lse, count)
            return total / count

        @staticmethod
        def backward(ctx, grad):
            hidden, weight, bias, extra, labels, lse, count = ctx.saved_tensors
            need_h, need_w, need_b = ctx.needs_input_grad[:3]
            keep = labels != IGNORE
            target = labels.masked_fill(~keep, 0)
            scale = (grad / count).to(lse.dtype)
            gh = torch.empty_like(hidden) if need_h else None
            gw = torch.zeros_like(weight) if need_w else None
            gb = torch.zeros_like(bias) if need_b else None
            for start in range(0, hidden.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                h = hidden[rows]
                p = torch.exp(logits_of(h, weight, bias, extra) - lse[rows, None])  # softmax
                p.scatter_add_(1, target[rows, None], torch.full_like(lse[rows, None], -1.0))  # - onehot(y)
                p.mul_((keep[rows] * scale)[:, None])  # dL/dz: 0 for ignored tokens
                g = p.to(hidden.dtype)
                del p
                if need_h:
                    torch.mm(g, weight, out=gh[rows])
                if need_w:
                    gw.addmm_(g.t(), h)  # accumulated in the weight's dtype, as gradients are
                if need_b:
                    gb += g.sum(0)
            return gh, gw, gb, None, None, None

    return ChunkedLMLoss


_FN = None


def chunked_lm_loss(hidden, weight, bias, extra, labels, *, shift: bool, chunk: int):
    """The mean cross entropy of `hidden @ weight^T (+ bias + extra)` against `labels`, chunk tokens at a time.

    hidden: [..., seq, d]; labels: [..., seq] (-100 = ignored); `shift`: predict token t+1 from
    position t (causal LMs, labels padded and shifted as transformers does)."""
    import torch

    global _FN
    if _FN is None:
        _FN = _function()
    if shift:
        labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[..., 1:]
    flat = hidden.reshape(-1, hidden.shape[-1])
    return _FN.apply(flat, weight, bias, None if extra is None else extra.reshape(-1), labels.reshape(-1), chunk)


def install(lm, chunk: int, seq2seq: bool) -> None:
    """Wrap `lm`'s forward (a transformers LM): in training with labels, body + chunked loss."""
    import torch

    original = lm.forward
    params = inspect.signature(original).parameters
    var_kw = next((n for n, p in params.items() if p.kind is p.VAR_KEYWORD), None)

    def forward(*args, **kwargs):
        bound = inspect.signature(original).bind_partial(*args, **kwargs).arguments
        kw = {**{k: v for k, v in bound.items() if k != var_kw}, **bound.get(var_kw, {})}
        labels = kw.pop("labels", None)
        if labels is None or not (lm.training and torch.is_grad_enabled()):
            return original(*args, **kwargs)
        for k in ("logits_to_keep", "num_items_in_batch", "return_dict"):
            kw.pop(k, None)
        if seq2seq:
            if kw.get("decoder_input_ids") is None and kw.get("decoder_inputs_embeds") is None:
                kw["decoder_input_ids"] = lm.prepare_decoder_input_ids_from_labels(labels)
            kw["use_cache"] = False  # what transformers' seq2seq LMs do when given labels
        out = lm.base_model(**kw)
        head = lm.get_output_embeddings()
        loss = chunked_lm_loss(out[0], head.weight, head.bias, getattr(lm, "final_logits_bias", None), labels,
                               shift=not seq2seq, chunk=chunk)
        return _output(seq2seq)(loss=loss, logits=None)

    # the wrapper keeps the original's signature (inspect follows __wrapped__): callers that read it to
    # decide what to pass (a cache argument, a Trainer's input columns) see the model's own parameters
    lm.forward = functools.wraps(original)(forward)
    lm._membench_chunkloss = chunk


def _output(seq2seq: bool):
    from transformers.modeling_outputs import CausalLMOutputWithPast, Seq2SeqLMOutput

    return Seq2SeqLMOutput if seq2seq else CausalLMOutputWithPast


@register
class ChunkLoss(Method):
    name = "chunkloss"
    summary = "the LM loss a chunk of tokens at a time, never the whole logits (causal/seq2seq LMs, any method)"
    Config = ChunkLossOptions
    is_modifier = True

    def apply(self, model, family, cfg: ChunkLossOptions):
        if family.task not in ("causal-lm", "seq2seq-lm"):
            raise UserError(f"+chunkloss replaces a language-model head; {family.name} models here have a "
                            f"{family.task} head")
        lm = unwrap_peft(model)
        if getattr(lm, "_membench_chunkloss", None) is not None:
            raise UserError("+chunkloss is given twice")
        head = lm.get_output_embeddings()
        if head is None or not hasattr(head, "weight"):
            raise UserError(f"+chunkloss: {type(lm).__name__} has no output embedding to chunk")
        install(lm, cfg.chunk or default_chunk(head.weight.shape[0]), seq2seq=family.task == "seq2seq-lm")
        return model
