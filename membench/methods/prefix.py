"""Prefix tuning through peft (Li & Liang 2021): trainable key/value prefixes in every attention layer.

peft's PrefixEncoder holds `num_virtual_tokens` x (layers * 2 * hidden) values
(optionally produced by a 2-layer MLP, `prefix_projection`); each step they are
handed to the model as a key/value cache, so every attention layer attends to
`num_virtual_tokens + seq_len` keys. The base is frozen; a classification
head trains too.

Three things differ from calling peft by hand, each for a reason:
- Real tokens keep the positions they have without a prefix (`keep_positions`,
  default): with a cache, transformers shifts positions by the cache length, so a
  full-length sequence would run past BERT's 512 positions. `keep_positions=false`
  restores the shift. (BART has no `position_ids` input and always shifts.)
  Encoders (BERT, RoBERTa) get it at their embeddings, which take the cache length:
  it is set to 0 there, so positions are the model's own (RoBERTa's padding-aware
  ones too) and the model's forward never sees `position_ids`. That matters: from
  transformers 5.25, position ids handed to an encoder reach its mask builder, whose
  packed-sequence check cannot read fake tensors and so builds a [b, 1, s, s] mask
  that ignores the prefix (and that the real run never builds). Decoders compute
  positions in the model's forward, so they get `position_ids` there.
- Classification backbones (BERT, RoBERTa) go through peft's FEATURE_EXTRACTION
  path, which passes the prefix to the model as `past_key_values`: peft 0.21's
  SEQ_CLS path looks for a `past_key_values` parameter that transformers 5
  renamed to `cache`, and refuses. The head trains by the method's own declaration
  (`trainable`), not peft's `modules_to_save` (same parameters train).
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
from ._peft import get_peft_model, peft_task_type
from .base import Method, MethodConfig, require_non_negative, require_positive_int
from .trainable import either, marked, task_head

_BUFFER = "membench_prompt_tokens"


@dataclass
class PrefixOptions(MethodConfig):
    num_virtual_tokens: int = 20
    prefix_projection: bool = False  # reparametrise the prefix through a 2-layer MLP (Li & Liang)
    encoder_hidden_size: int = 0  # width of that MLP (0: the model's hidden size)
    keep_positions: bool = True  # real tokens keep positions 0..s-1 (false: shifted by the prefix length)

    def check(self, method):
        require_positive_int(method, "num_virtual_tokens", self.num_virtual_tokens)
        require_non_negative(method, "encoder_hidden_size", self.encoder_hidden_size)  # 0: the hidden size


class _BufferBackedTokens(dict):
    """peft's `prompt_tokens` dict, reading each adapter's ids from a buffer of its prompt encoder."""

    def __init__(self, encoders, tokens: dict):
        super().__init__(tokens)
        self._encoders = encoders
        for name, t in tokens.items():
            encoders[name].register_buffer(_BUFFER, t, persistent=False)

    def __getitem__(self, name):
        return getattr(self._encoders[name], _BUFFER)


_OFFSET_ARGS = ("cache_length", "past_key_values_length")  # transformers >= 5.25, and before


class _NoPositionShift:
    """Forward pre-hook on an encoder's embeddings: the cache length that shifts positions is 0."""

    def __init__(self, arg: str):
        self.arg = arg

    def __call__(self, module, args, kwargs):
        if not kwargs.get(self.arg):
            return None
        return args, {**kwargs, self.arg: 0}


def _position_offset_arg(module) -> str | None:
    """The name under which an embeddings module takes the cache length, if it does."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return next((name for name in _OFFSET_ARGS if name in params), None)


class _KeepPositions:
    """Forward pre-hook on a decoder: pass position_ids = 0..s-1 unless the caller gave some."""

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
    modalities = ("text",)  # prefixes are key/value tokens

    def apply(self, model, family, cfg: PrefixOptions):
        import warnings

        from peft import PrefixTuningConfig

        if family.modality not in self.modalities:
            raise UserError(f"prefix tuning prepends key/value prefixes to token sequences; {family.name} models "
                            f"read {family.modality}s (peft's prefix tuning needs a text model)")
        task = peft_task_type(family)
        classification = task == "SEQ_CLS"
        d = family.hidden_size(model.config)
        # the layers that get a prefix, as peft 0.21 reads them (config.num_hidden_layers, which BART
        # maps to its encoder layers); peft 0.18 read only the config's dict, where BART has no such key
        layers = getattr(model.config, "num_hidden_layers", None)
        config = PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, num_layers=layers,
                                    task_type="FEATURE_EXTRACTION" if classification else task,
                                    prefix_projection=cfg.prefix_projection,
                                    encoder_hidden_size=cfg.encoder_hidden_size or d)
        peft_model = get_peft_model(model, config)
        # peft passes the prefix as `past_key_values`, which transformers 5 still accepts (renamed `cache`)
        warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)
        peft_model.prompt_tokens = _BufferBackedTokens(peft_model.prompt_encoder, peft_model.prompt_tokens)
        if cfg.keep_positions:
            _keep_positions(peft_model, model, family, encoder=classification)
        return peft_model

    def trainable(self, model, family, cfg):
        """What peft marks (the prefix encoder), and a classifier's head: peft's FEATURE_EXTRACTION path,
        taken for classifiers (module docstring), does not train it."""
        return either(marked(model), task_head(model, family))


def _keep_positions(peft_model, model, family, *, encoder: bool) -> None:
    import inspect

    if encoder:
        for emb in family.embeddings(model):
            arg = _position_offset_arg(emb)
            if arg is not None:
                emb.register_forward_pre_hook(_NoPositionShift(arg), with_kwargs=True)
                return
    if "position_ids" in inspect.signature(model.forward).parameters:
        peft_model.register_forward_pre_hook(_KeepPositions(), with_kwargs=True)
