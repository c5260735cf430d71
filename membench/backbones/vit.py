"""ViT: pre-LN encoder over image patches plus a [CLS] token, image-classification head.

    h = h + Dropout(Wo Attn(LN1(h)))          attention_block
    h = h + Dropout(W2 act(W1 LN2(h)))        ffn_block

The sequence every layer sees is (image_size / patch_size)^2 patches + 1, set by the
image size (`--image-size`, default the config's 224), never by `--seq-len`.
transformers' ViT was refactored during 5.x: newer releases name the projections
attention.{q,k,v,o}_proj and mlp.{fc1,fc2}; earlier ones attention.attention.{query,key,
value}, attention.output.dense, intermediate.dense and output.dense (and keep the layer list in
vit.encoder.layer, not vit.layers). Both are handled.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Family
from .residual import residual


def _refactored(layer) -> bool:
    return hasattr(layer, "mlp")


@dataclass
class ViTFamily(Family):
    name: str = "vit"
    tiny_model: str = "vit-base"
    dropout_keys: tuple[str, ...] = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    model_types: tuple[str, ...] = ("vit",)
    modality: str = "image"
    roles = {"query": ("q_proj", "query"), "key": ("k_proj", "key"), "value": ("v_proj", "value"),  # newer, earlier
             "ffn_down": ("fc2", "output.dense")}

    def tiny(self, layers=2, hidden=32, heads=2):  # 16 x 16 images in 4 x 4 patches: 16 patches + [CLS]
        return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                    intermediate_size=2 * hidden, image_size=16, patch_size=4)

    def max_positions(self, config):
        return self.sequence_length(config)

    def sequence_length(self, config) -> int:
        """Tokens per image: one per patch, plus [CLS]."""
        return (config.image_size // config.patch_size) ** 2 + 1

    def make_batch(self, config, batch_size, seq_len, generator):
        import torch

        pixels = torch.randn(batch_size, config.num_channels, config.image_size, config.image_size,
                             generator=generator)
        labels = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
        return {"pixel_values": pixels.to(torch.get_default_dtype()), "labels": labels}

    def stacks(self, model):
        vit = model.vit  # newer releases hold the layers directly, earlier ones in an encoder
        return {"layers": vit.layers if hasattr(vit, "layers") else vit.encoder.layer}

    def embeddings(self, model):
        return [model.vit.embeddings]

    def attn_out(self, layer):
        return layer.attention.o_proj if _refactored(layer) else layer.attention.output.dense

    def ffn_in(self, layer):
        return layer.mlp if _refactored(layer) else layer.intermediate

    def ffn_out(self, layer):
        return layer.mlp if _refactored(layer) else layer.output.dense

    def attention_block(self, layer, hidden, attention_mask=None, *args, **kwargs):
        out = layer.attention(layer.layernorm_before(hidden), attention_mask, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        if _refactored(layer):
            out = layer.dropout(out)  # earlier releases drop out inside attention.output
        return out + residual(hidden)

    def ffn_block(self, layer, hidden):
        if _refactored(layer):
            return residual(hidden) + layer.dropout(layer.mlp(layer.layernorm_after(hidden)))
        return layer.output(layer.intermediate(layer.layernorm_after(hidden)), residual(hidden))  # adds it
