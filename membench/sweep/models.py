"""What a sweep knows of its named models before any run, without torch: their shipped config files.

`membench sweep --dry-run` must stay instant, so `membench.backbones` (which imports torch) is not
imported here (importing any of its modules runs its __init__, which imports every family, and the
families import torch); a few facts of the families' code are restated instead, by model type, and
tests/sweep/test_models.py checks them against the families: every model type restated, nothing else. The run's preflight (sweep/worker.py)
checks everything again on the real configs and models.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parent.parent / "backbones" / "configs"

# Family.task and Family.modality of the family of each model type (membench/backbones/<family>.py)
TASKS = {"bert": "classification", "roberta": "classification", "vit": "classification", "bart": "seq2seq-lm",
         "opt": "causal-lm", "gpt2": "causal-lm", "llama": "causal-lm"}
IMAGE_TYPES = frozenset({"vit"})
LM_TASKS = ("causal-lm", "seq2seq-lm")


def known() -> list[str]:
    """The named models shipped with membench."""
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


@cache
def _shipped(name: str) -> dict[str, Any] | None:
    path = CONFIGS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def config(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The shipped config of `name` with `overrides` applied; None for an unknown model."""
    values = _shipped(name)
    return None if values is None else {**values, **(overrides or {})}


def reads_images(name: str) -> bool:
    """An image model: its sequence is the patches of an image (--image-sizes), not --seq-lens."""
    values = _shipped(name)
    return values is not None and values.get("model_type") in IMAGE_TYPES


def max_positions(name: str, overrides: dict[str, Any] | None = None) -> int | None:
    """The longest sequence a text model takes (Family.max_positions); None when unknown or an image model."""
    values = config(name, overrides)
    if values is None or values.get("model_type") in IMAGE_TYPES:
        return None
    kind = values.get("model_type")
    if kind == "gpt2":
        n = values.get("n_positions")
    elif kind == "roberta":  # RoBERTa's position ids start after the padding index
        n = _int(values.get("max_position_embeddings"))
        pad = _int(values.get("pad_token_id"))
        n = None if n is None or pad is None else n - pad - 1
    else:
        n = values.get("max_position_embeddings")
    return _int(n)


def patch_size(name: str, overrides: dict[str, Any] | None = None) -> int | None:
    values = config(name, overrides)
    return _int(values.get("patch_size")) if values is not None and values.get("model_type") in IMAGE_TYPES else None


def family(name: str) -> str | None:
    values = _shipped(name)
    return None if values is None else values.get("model_type")


def method_refusal(method: str, name: str) -> str | None:
    """Why `method` (e.g. 'meft3+chunkloss') cannot be applied to model `name`, by what the methods check
    of the model's family (chunkloss: a language-model head; prefix: a text model); None: nothing known."""
    kind = family(name)
    if kind not in TASKS:
        return None
    from ..spec import MethodSpec

    parsed = MethodSpec.parse(method)
    base, modifiers = parsed.base, parsed.modifiers
    if "chunkloss" in modifiers and TASKS[kind] not in LM_TASKS:
        return (f"+chunkloss replaces a language-model head; {kind} models here have a {TASKS[kind]} head")
    if base == "prefix" and kind in IMAGE_TYPES:
        return (f"prefix tuning prepends key/value prefixes to token sequences; {kind} models read images "
                "(peft's prefix tuning needs a text model)")
    return None


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
