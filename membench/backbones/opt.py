"""OPT: decoder, pre-LN (350m: post-LN), ReLU FFN, causal LM head.

    h = h + Dropout(Wo Attn(LN(h)))          attention_block (LN after the add when post-LN)
    h = h + Dropout(W2 relu(W1 LN(h)))       ffn_block
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import TINY_VOCAB, Family
from .residual import residual


@dataclass
class OPTFamily(Family):
    name: str = "opt"
    tiny_model: str = "opt-125m"
    dropout_keys: tuple[str, ...] = ("dropout", "attention_dropout")
    model_types: tuple[str, ...] = ("opt",)
    task: str = "causal-lm"
    decoder: bool = True
    roles = {"query": ("q_proj",), "key": ("k_proj",), "value": ("v_proj",), "ffn_down": ("fc2",)}

    def tiny(self, layers=2, hidden=32, heads=2):
        return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=2 * hidden,
                    word_embed_proj_dim=hidden, vocab_size=TINY_VOCAB)

    def max_positions(self, config):
        return config.max_position_embeddings

    def stacks(self, model):
        return {"layers": model.model.decoder.layers}

    def embeddings(self, model):
        dec = model.model.decoder
        return [m for m in (dec.embed_tokens, dec.embed_positions, dec.project_in) if m is not None]

    def attn_out(self, layer):
        return layer.self_attn.out_proj

    def ffn_in(self, layer):
        return layer.fc1

    def ffn_out(self, layer):
        return layer.fc2

    def attention_block(self, layer, hidden, attention_mask=None, cache=None, use_cache=False,
                        position_ids=None, **kwargs):
        skip = residual(hidden)
        if layer.do_layer_norm_before:
            hidden = layer.self_attn_layer_norm(hidden)
        hidden, _ = layer.self_attn(hidden_states=hidden, cache=cache, position_ids=position_ids,
                                    attention_mask=attention_mask, **kwargs)
        hidden = skip + nn.functional.dropout(hidden, p=layer.dropout, training=layer.training)
        if not layer.do_layer_norm_before:
            hidden = layer.self_attn_layer_norm(hidden)
        return hidden

    def ffn_block(self, layer, hidden):
        shape = hidden.shape
        skip = residual(hidden).reshape(-1, hidden.size(-1))
        hidden = hidden.reshape(-1, hidden.size(-1))
        if layer.do_layer_norm_before:
            hidden = layer.final_layer_norm(hidden)
        hidden = layer.fc2(layer.activation_fn(layer.fc1(hidden)))
        hidden = nn.functional.dropout(hidden, p=layer.dropout, training=layer.training)
        hidden = (skip + hidden).view(shape)
        if not layer.do_layer_norm_before:
            hidden = layer.final_layer_norm(hidden)
        return hidden
