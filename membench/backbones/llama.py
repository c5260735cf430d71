"""Llama: decoder, pre-RMSNorm, SwiGLU FFN, rotary positions, causal LM head.

    h = h + Attn(RMSNorm(h))          attention_block
    h = h + MLP(RMSNorm(h))           ffn_block
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import TINY_VOCAB, Family
from .residual import residual


@dataclass
class LlamaFamily(Family):
    name: str = "llama"
    tiny_model: str = "llama-2-7b"
    dropout_keys: tuple[str, ...] = ("attention_dropout",)
    model_types: tuple[str, ...] = ("llama",)
    task: str = "causal-lm"
    decoder: bool = True
    bias_switches: tuple[str, ...] = ("attention_bias", "mlp_bias")
    roles = {"query": ("q_proj",), "key": ("k_proj",), "value": ("v_proj",), "ffn_down": ("down_proj",)}

    def tiny(self, layers=2, hidden=32, heads=2):
        return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                    num_key_value_heads=heads, intermediate_size=2 * hidden, vocab_size=TINY_VOCAB)

    def stacks(self, model):
        return {"layers": model.model.layers}

    def embeddings(self, model):
        return [model.model.embed_tokens, model.model.rotary_emb]

    def attn_out(self, layer):
        return layer.self_attn.o_proj

    def ffn_in(self, layer):
        return layer.mlp

    def ffn_out(self, layer):
        return layer.mlp

    def attention_block(self, layer, hidden, attention_mask=None, position_ids=None, cache=None,
                        use_cache=False, position_embeddings=None, **kwargs):
        out, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden), attention_mask=attention_mask,
                                 position_ids=position_ids, cache=cache, use_cache=use_cache,
                                 position_embeddings=position_embeddings, **kwargs)
        return residual(hidden) + out

    def ffn_block(self, layer, hidden):
        return residual(hidden) + layer.mlp(layer.post_attention_layernorm(hidden))
