"""BERT and RoBERTa: post-LN encoders, classification head.

    h = LN(h + Dropout(Wo Attn(h)))          attention_block
    h = LN(h + Dropout(W2 act(W1 h)))        ffn_block
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import TINY_VOCAB, Family
from .residual import residual


@dataclass
class BertFamily(Family):
    name: str = "bert"
    tiny_model: str = "bert-base"
    dropout_keys: tuple[str, ...] = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    model_types: tuple[str, ...] = ("bert",)
    roles = {"query": ("query",), "key": ("key",), "value": ("value",), "ffn_down": ("output.dense",)}
    prefix: str = "bert"

    def tiny(self, layers=2, hidden=32, heads=2):
        return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                    intermediate_size=2 * hidden, vocab_size=TINY_VOCAB)

    def stacks(self, model):
        return {"layers": getattr(model, self.prefix).encoder.layer}

    def embeddings(self, model):
        return [getattr(model, self.prefix).embeddings]

    def attn_out(self, layer):
        return layer.attention.output.dense

    def ffn_in(self, layer):
        return layer.intermediate

    def ffn_out(self, layer):
        return layer.output.dense

    def attention_block(self, layer, hidden, attention_mask=None, *args, **kwargs):
        kwargs.pop("encoder_hidden_states", None)
        kwargs.pop("encoder_attention_mask", None)
        # BertAttention as it runs, with its output half LN(dropout(dense(o)) + h) written out: the
        # residual is ours to route, and as one expression the dropout output is freed before the
        # LayerNorm runs (MEFT's recompute peak is here)
        out = layer.attention.self(hidden, attention_mask=attention_mask, **kwargs)[0]
        o = layer.attention.output
        return o.LayerNorm(o.dropout(o.dense(out)) + residual(hidden))

    def ffn_block(self, layer, hidden):
        return layer.output(layer.intermediate(hidden), residual(hidden))


@dataclass
class RobertaFamily(BertFamily):
    name: str = "roberta"
    tiny_model: str = "roberta-base"
    model_types: tuple[str, ...] = ("roberta",)
    prefix: str = "roberta"

    def max_positions(self, config):
        # RoBERTa's position ids start after the padding index.
        return config.max_position_embeddings - config.pad_token_id - 1
