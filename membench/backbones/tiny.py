"""Tiny what-if overrides per family: same architecture, a few thousand parameters.

Used by tests, CI benchmarks and smoke runs: `membench run --model opt-125m --tiny`.
"""

from __future__ import annotations

_VOCAB = 1000


def tiny_overrides(family: str, layers: int = 2, hidden: int = 32, heads: int = 2) -> dict:
    ffn = 2 * hidden
    if family in ("bert", "roberta"):
        return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                    intermediate_size=ffn, vocab_size=_VOCAB)
    if family == "bart":
        return dict(d_model=hidden, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
                    decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, vocab_size=_VOCAB)
    if family == "opt":
        return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn,
                    word_embed_proj_dim=hidden, vocab_size=_VOCAB)
    if family == "gpt2":
        return dict(n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=_VOCAB)
    if family == "vit":  # 16 x 16 images in 4 x 4 patches: 16 patches + [CLS]
        return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                    image_size=16, patch_size=4)
    if family == "llama":
        return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                    num_key_value_heads=heads, intermediate_size=ffn, vocab_size=_VOCAB)
    raise KeyError(family)


# one representative named model per family (tests parametrize over these)
FAMILY_MODELS = {"bert": "bert-base", "roberta": "roberta-base", "bart": "bart-base", "opt": "opt-125m",
                 "gpt2": "gpt2", "llama": "llama-2-7b", "vit": "vit-base"}


def text_seq(family: str, n: int) -> int | None:
    """`n` for text families; None for image families, whose sequence the image size fixes (patches + 1)."""
    from . import FAMILIES

    return None if FAMILIES[family].modality == "image" else n


def tiny(family: str, **kw) -> tuple[str, dict]:
    """(named model, overrides) for a tiny model of `family`, e.g. tiny("opt") -> ("opt-125m", {...})."""
    return FAMILY_MODELS[family], tiny_overrides(family, **kw)
