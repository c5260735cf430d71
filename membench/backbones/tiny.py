"""Tiny models for tests and smoke runs: each family's `Family.tiny()` overrides on its `Family.tiny_model`.

Used by tests, CI benchmarks and smoke runs: `membench run --model opt-125m --tiny`. The family lists tests
parametrize over come from the registry (`FAMILIES`), so a new family is tested without editing a list.
"""

from __future__ import annotations

from . import FAMILIES


def tiny_overrides(family: str, layers: int = 2, hidden: int = 32, heads: int = 2) -> dict:
    """The family's own tiny config (`Family.tiny`), by family name."""
    return FAMILIES[family].tiny(layers=layers, hidden=hidden, heads=heads)


# family -> its representative named model (Family.tiny_model): what tests parametrize over
FAMILY_MODELS = {name: family.tiny_model for name, family in FAMILIES.items()}


def text_seq(family: str, n: int) -> int | None:
    """`n` for text families; None for image families, whose sequence the image size fixes (patches + 1)."""
    return None if FAMILIES[family].modality == "image" else n


def tiny(family: str, **kw) -> tuple[str, dict]:
    """(named model, overrides) for a tiny model of `family`, e.g. tiny("opt") -> ("opt-125m", {...})."""
    return FAMILIES[family].tiny_model, tiny_overrides(family, **kw)
