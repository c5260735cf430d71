"""GPT-2: decoder, pre-LN, GELU FFN (Conv1D projections), causal LM head.

    h = h + Attn(LN1(h))        attention_block (c_proj and resid dropout inside attn)
    h = h + MLP(LN2(h))         ffn_block
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import TINY_VOCAB, Family
from .residual import residual


@dataclass
class GPT2Family(Family):
    name: str = "gpt2"
    tiny_model: str = "gpt2"
    dropout_keys: tuple[str, ...] = ("resid_pdrop", "embd_pdrop", "attn_pdrop")
    model_types: tuple[str, ...] = ("gpt2",)
    task: str = "causal-lm"
    decoder: bool = True
    # c_attn computes queries, keys and values in one (Conv1D) projection
    roles = {"query": ("c_attn",), "key": ("c_attn",), "value": ("c_attn",), "ffn_down": ("mlp.c_proj",)}

    def tiny(self, layers=2, hidden=32, heads=2):
        return dict(n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=TINY_VOCAB)

    def hidden_size(self, config):
        return config.n_embd

    def max_positions(self, config):
        return config.n_positions

    def num_layers_key(self, config):
        return ("n_layer",)

    def stacks(self, model):
        return {"layers": model.transformer.h}

    def embeddings(self, model):
        return [model.transformer.wte, model.transformer.wpe]

    def attn_out(self, layer):
        return layer.attn.c_proj

    def ffn_in(self, layer):
        return layer.mlp

    def ffn_out(self, layer):
        return layer.mlp

    def attention_block(self, layer, hidden, cache=None, attention_mask=None, encoder_hidden_states=None,
                        encoder_attention_mask=None, use_cache=False, **kwargs):
        out, _ = layer.attn(layer.ln_1(hidden), cache=cache, attention_mask=attention_mask,
                            use_cache=use_cache, **kwargs)
        return out + residual(hidden)

    def ffn_block(self, layer, hidden):
        return residual(hidden) + layer.mlp(layer.ln_2(hidden))
