"""Tiny models for tests and smoke runs: each family's `Family.tiny()` overrides, and one named model per family.

Used by tests, CI benchmarks and smoke runs: `membench run --model opt-125m --tiny`.
"""

from __future__ import annotations


def tiny_overrides(family: str, layers: int = 2, hidden: int = 32, heads: int = 2) -> dict:
    """The family's own tiny config (`Family.tiny`), by family name."""
    from . import FAMILIES

    return FAMILIES[family].tiny(layers=layers, hidden=hidden, heads=heads)


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
