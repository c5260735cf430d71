"""BART: post-LN encoder-decoder, GELU FFN, sequence-to-sequence LM head.

(The classification head pools <eos> positions with data-dependent indexing,
which fake tensors cannot run; the LM head profiles the same stacks.)

Encoder layer:  h = LN(h + Dropout(Attn(h)));  h = LN(h + Dropout(W2 Dropout(act(W1 h))))
Decoder layer:  adds LN(h + Dropout(CrossAttn(h, enc))) after self-attention; the
attention block is self- plus cross-attention, the FFN block is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import TINY_VOCAB, Family
from .residual import residual


@dataclass
class BartFamily(Family):
    name: str = "bart"
    tiny_model: str = "bart-base"
    dropout_keys: tuple[str, ...] = ("dropout", "attention_dropout", "activation_dropout")
    model_types: tuple[str, ...] = ("bart",)
    task: str = "seq2seq-lm"
    roles = {"query": ("q_proj",), "key": ("k_proj",), "value": ("v_proj",), "ffn_down": ("fc2",)}

    def tiny(self, layers=2, hidden=32, heads=2):
        return dict(d_model=hidden, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
                    decoder_attention_heads=heads, encoder_ffn_dim=2 * hidden, decoder_ffn_dim=2 * hidden,
                    vocab_size=TINY_VOCAB)

    def hidden_size(self, config):
        return config.d_model

    def activation(self, config):
        return config.activation_function

    def num_layers_key(self, config):
        return ("encoder_layers", "decoder_layers")

    def stacks(self, model):
        return {"encoder": model.model.encoder.layers, "decoder": model.model.decoder.layers}

    def causal(self, stack):
        return stack == "decoder"

    def embeddings(self, model):
        m = model.model
        return [m.shared, m.encoder.embed_positions, m.encoder.layernorm_embedding,
                m.decoder.embed_positions, m.decoder.layernorm_embedding]

    def attn_out(self, layer):
        return layer.self_attn.out_proj

    def ffn_in(self, layer):
        return layer.fc1

    def ffn_out(self, layer):
        return layer.fc2

    def attention_block(self, layer, hidden, attention_mask=None, encoder_hidden_states=None,
                        encoder_attention_mask=None, cache=None, use_cache=None, **kwargs):
        is_decoder = hasattr(layer, "encoder_attn")
        extra = {"cache": cache} if is_decoder else {}
        out, _ = layer.self_attn(hidden, attention_mask=attention_mask, **extra, **kwargs)
        hidden = layer.self_attn_layer_norm(residual(hidden) + nn.functional.dropout(out, p=layer.dropout,
                                                                                    training=layer.training))
        if is_decoder and encoder_hidden_states is not None:
            out, _ = layer.encoder_attn(hidden, key_value_states=encoder_hidden_states,
                                        attention_mask=encoder_attention_mask, cache=cache, **kwargs)
            hidden = layer.encoder_attn_layer_norm(
                hidden + nn.functional.dropout(out, p=layer.dropout, training=layer.training))
        return hidden

    def ffn_block(self, layer, hidden):
        import torch

        skip = residual(hidden)
        hidden = layer.activation_fn(layer.fc1(hidden))
        hidden = nn.functional.dropout(hidden, p=layer.activation_dropout, training=layer.training)
        hidden = nn.functional.dropout(layer.fc2(hidden), p=layer.dropout, training=layer.training)
        hidden = layer.final_layer_norm(skip + hidden)
        if not hasattr(layer, "encoder_attn") and hidden.dtype == torch.float16 and not torch.isfinite(hidden).all():
            clamp = torch.finfo(hidden.dtype).max - 1000
            hidden = torch.clamp(hidden, min=-clamp, max=clamp)
        return hidden
