"""Backbone registry: named models (shipped configs) and the families that build them.

To add a family: write one file next to this one with a `Family` subclass (its
`tiny_model` and `dropout_keys` among its facts) and add it to `FAMILIES`. To add a
named model: drop its config JSON in `configs/`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from ..assignments import coerce_like, parse_assignments
from ..errors import UserError
from .bart import BartFamily
from .base import Backbone, Family
from .bert import BertFamily, RobertaFamily
from .gpt2 import GPT2Family
from .llama import LlamaFamily
from .opt import OPTFamily
from .vit import ViTFamily

FAMILIES: dict[str, Family] = {
    f.name: f for f in (BertFamily(), RobertaFamily(), BartFamily(), OPTFamily(), GPT2Family(), LlamaFamily(),
                        ViTFamily())
}
_BY_MODEL_TYPE = {t: f for f in FAMILIES.values() for t in f.model_types}

__all__ = ["Backbone", "Family", "FAMILIES", "names", "get", "family_for", "make_config", "parse_overrides"]


@cache
def _shipped() -> dict[str, dict]:
    out = {}
    for entry in resources.files(__package__).joinpath("configs").iterdir():
        if entry.name.endswith(".json"):
            out[entry.name[:-5]] = json.loads(entry.read_text())
    return dict(sorted(out.items()))


def names() -> list[str]:
    return list(_shipped())


def family_for(model_type: str) -> Family:
    if model_type not in _BY_MODEL_TYPE:
        raise UserError(f"model type {model_type!r} has no backbone family; supported: {', '.join(sorted(_BY_MODEL_TYPE))}")
    return _BY_MODEL_TYPE[model_type]


def get(name: str) -> Backbone:
    shipped = _shipped()
    if name not in shipped:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(shipped)}")
    values = shipped[name]
    return Backbone(name=name, family=family_for(values["model_type"]), config_values=dict(values))


def parse_overrides(items) -> dict[str, object]:
    """['num_hidden_layers=2', 'hidden_act=relu'] -> typed dict (values parsed as JSON when they can be)."""
    return parse_assignments(items)


def _check_type(key: str, old, new):
    if old is None or new is None:  # a key the config leaves unset, or set to null: as given
        return new
    new = coerce_like(new, old, f"override {key}")
    size = "layers" in key or "size" in key or "heads" in key or "dim" in key or key.startswith("n_")
    if isinstance(old, int) and not isinstance(old, bool) and isinstance(new, int) and new <= 0 and size:
        raise UserError(f"override {key}={new}: must be a positive integer")
    return new


def _derive_head_dim(config, overrides: dict) -> None:
    """Llama-style configs store head_dim; a what-if on hidden size or heads must move it too."""
    if "head_dim" in overrides or getattr(config, "head_dim", None) is None:
        return
    if {"hidden_size", "num_attention_heads"} & set(overrides):
        heads = config.num_attention_heads
        if config.hidden_size % heads:
            raise UserError(f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads {heads}")
        config.head_dim = config.hidden_size // heads


def make_config(backbone: Backbone | None, overrides: dict | None = None, attn: str = "sdpa",
                pretrained: str | None = None):
    """The transformers config for a named model (or a local checkpoint), with overrides applied."""
    from transformers import CONFIG_MAPPING, AutoConfig

    if attn not in ("eager", "sdpa"):
        raise UserError(f"unknown attention implementation {attn!r}; allowed: eager, sdpa")
    if pretrained:
        from pathlib import Path

        if not Path(pretrained).is_dir():
            raise UserError(f"--pretrained {pretrained}: no such folder (give a local checkpoint folder; "
                            "nothing is downloaded)")
        if not (Path(pretrained) / "config.json").is_file():
            raise UserError(f"--pretrained {pretrained}: no config.json in that folder (save one with "
                            "save_pretrained)")
        try:
            config = AutoConfig.from_pretrained(pretrained, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load a config from {pretrained!r}: {str(exc).splitlines()[0]}") from None
    else:
        values = dict(backbone.config_values)
        config = CONFIG_MAPPING[values.pop("model_type")](**values)
    known = config.to_dict()
    for key, value in (overrides or {}).items():
        if key not in known and not hasattr(config, key):
            words = {"layer", "layers", "hidden", "heads", "head", "size", "dim", "positions", "position", "embd", "model"}
            sizes = [k for k, v in sorted(known.items()) if isinstance(v, int) and not isinstance(v, bool)
                     and (k.startswith("n_") or words & set(k.split("_")))]
            raise UserError(f"unknown config key {key!r} for {config.model_type}; size keys are: {', '.join(sizes)}",
                            field=("override", key))
        try:
            setattr(config, key, _check_type(key, known.get(key, getattr(config, key, None)), value))
        except UserError as exc:
            raise UserError(str(exc), field=("override", key)) from None
    _derive_head_dim(config, overrides or {})
    if "use_cache" not in (overrides or {}) and hasattr(config, "use_cache"):
        config.use_cache = False  # a training step keeps no KV cache (fine-tuning scripts turn it off)
    config._attn_implementation = attn
    fam = family_for(config.model_type)
    if fam.task == "classification" and not getattr(config, "num_labels", None):
        config.num_labels = 2
    return config
