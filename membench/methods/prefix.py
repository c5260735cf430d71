"""Prefix tuning through peft (Li & Liang 2021): trainable key/value prefixes in every attention layer.

peft's PrefixEncoder holds `num_virtual_tokens` x (layers * 2 * hidden) values
(optionally produced by a 2-layer MLP, `prefix_projection`); each step they are
handed to the model as a key/value cache, so every attention layer attends to
`num_virtual_tokens + seq_len` keys. The base is frozen; a classification
head trains too.

Three things differ from calling peft by hand, each for a reason:
- Real tokens keep positions 0..s-1 (`keep_positions`, default): with a cache,
  transformers shifts positions by the cache length, so a full-length sequence
  would run past BERT's 512 positions. `keep_positions=false` restores the shift.
  (BART has no `position_ids` input and always shifts.)
- Classification backbones (BERT, RoBERTa) go through peft's FEATURE_EXTRACTION
  path, which passes the prefix to the model as `past_key_values`: peft 0.21's
  SEQ_CLS path looks for a `past_key_values` parameter that transformers 5
  renamed to `cache`, and refuses. The head is made trainable here instead of
  by peft's `modules_to_save` (same parameters train).
- peft keeps the prompt token ids in a plain dict, not a buffer, so the fake
  backend could not convert them; they are registered as a (non-persistent)
  buffer of the prefix encoder and the dict reads them from there.

Prefix tuning does not preserve the starting point: the random prefixes change
every layer's attention (the gap is measured in the tests, not hidden).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from . import register
from ._heads import train_task_head
from ._peft import peft_task_type
from .base import Method, MethodConfig

_BUFFER = "membench_prompt_tokens"


@dataclass
class PrefixOptions(MethodConfig):
    num_virtual_tokens: int = 20
    prefix_projection: bool = False  # reparametrise the prefix through a 2-layer MLP (Li & Liang)
    encoder_hidden_size: int = 0  # width of that MLP (0: the model's hidden size)
    keep_positions: bool = True  # real tokens keep positions 0..s-1 (false: shifted by the prefix length)


class _BufferBackedTokens(dict):
    """peft's `prompt_tokens` dict, reading each adapter's ids from a buffer of its prompt encoder."""

    def __init__(self, encoders, tokens: dict):
        super().__init__(tokens)
        self._encoders = encoders
        for name, t in tokens.items():
            encoders[name].register_buffer(_BUFFER, t, persistent=False)

    def __getitem__(self, name):
        return getattr(self._encoders[name], _BUFFER)


class _KeepPositions:
    """Forward pre-hook: pass position_ids = 0..s-1 unless the caller gave some."""

    def __call__(self, module, args, kwargs):
        import torch

        if kwargs.get("position_ids") is not None:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            embeds = kwargs.get("inputs_embeds")
            if embeds is None:
                return None
            b, s, device = embeds.shape[0], embeds.shape[1], embeds.device
        else:
            b, s, device = ids.shape[0], ids.shape[1], ids.device
        kwargs = dict(kwargs)
        kwargs["position_ids"] = torch.arange(s, device=device).unsqueeze(0).expand(b, s)
        return args, kwargs


@register
class Prefix(Method):
    name = "prefix"
    summary = "prefix tuning (peft): trainable key/value prefixes in every attention layer, base frozen"
    Config = PrefixOptions

    def apply(self, model, family, cfg: PrefixOptions):
        import inspect
        import warnings

        from peft import PrefixTuningConfig, get_peft_model

        if family.modality != "text":
            raise UserError(f"prefix tuning prepends key/value prefixes to token sequences; {family.name} models "
                            f"read {family.modality}s (peft's prefix tuning needs a text model)")
        if cfg.num_virtual_tokens <= 0:
            raise UserError(f"option prefix.num_virtual_tokens={cfg.num_virtual_tokens}: must be positive")
        if cfg.encoder_hidden_size < 0:
            raise UserError(f"option prefix.encoder_hidden_size={cfg.encoder_hidden_size}: must be >= 0")
        task = peft_task_type(family)
        classification = task == "SEQ_CLS"
        d = family.hidden_size(model.config)
        config = PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens,
                                    task_type="FEATURE_EXTRACTION" if classification else task,
                                    prefix_projection=cfg.prefix_projection,
                                    encoder_hidden_size=cfg.encoder_hidden_size or d)
        peft_model = get_peft_model(model, config)
        # peft passes the prefix as `past_key_values`, which transformers 5 still accepts (renamed `cache`)
        warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)
        peft_model.prompt_tokens = _BufferBackedTokens(peft_model.prompt_encoder, peft_model.prompt_tokens)
        if classification:
            train_task_head(model, family)
        base_params = inspect.signature(model.forward).parameters
        if cfg.keep_positions and "position_ids" in base_params:
            peft_model.register_forward_pre_hook(_KeepPositions(), with_kwargs=True)
        return peft_model
