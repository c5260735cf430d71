"""Gradient checkpointing as a modifier: `full+ckpt`, `lora+ckpt`, `houlsby+ckpt`, ...

Each layer of each stack runs under `torch.utils.checkpoint.checkpoint(...,
use_reentrant=False)`: forward keeps only the layer's inputs, backward runs the
layer again to rebuild what it needs.

- Non-reentrant checkpointing gives correct gradients when the layer inputs do
  not require grad (frozen embeddings); reentrant checkpointing would silently
  drop every gradient inside the layer.
- The layer's body runs as a child module (`<layer>.checkpointed`), so module
  hooks (profilers, adapters) fire during the recompute too and what is
  recomputed is attributed to its layer. The layer's own hooks fire once.
- KV caches. A cache that holds nothing for this layer yet (the one
  transformers builds in training when `use_cache` is on) is not passed to the
  layer, as transformers' own checkpointing does: the recompute would update it
  a second time, and it would keep every layer's keys and values alive. A cache
  that already holds something for the layer is kept (prefix tuning hands its
  prefixes over as one; transformers' own checkpointing drops it, and with it
  the prefixes, with a warning): its state is snapshotted before the layer runs
  and restored before the recompute. (Training steps run with `use_cache=False`
  by default; `--override use_cache=true` brings the empty cache back.)
- Eval mode and `torch.no_grad()` run the layer as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import register
from .base import Method, MethodConfig, unwrap_peft


@dataclass
class CkptOptions(MethodConfig):
    preserve_rng_state: bool = True  # same dropout masks in the recompute


def _stateful(x) -> bool:
    from transformers.cache_utils import Cache, CacheLayerMixin

    return isinstance(x, Cache | CacheLayerMixin)


def _copy(v):
    return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v


def snapshot_cache(cache, out: dict | None = None) -> dict:
    """Shallow state of a transformers cache and of every cache/cache layer it holds (tensor references only)."""
    out = {} if out is None else out
    if id(cache) in out:
        return out
    state = {k: _copy(v) for k, v in vars(cache).items()}
    out[id(cache)] = (cache, state)
    for v in state.values():
        for x in (v if isinstance(v, list) else v.values() if isinstance(v, dict) else (v,)):
            if _stateful(x):
                snapshot_cache(x, out)
    return out


def restore_cache(snap: dict) -> None:
    for obj, state in snap.values():
        obj.__dict__.clear()
        obj.__dict__.update({k: _copy(v) for k, v in state.items()})


def _holds(cache, index: int) -> bool:
    try:
        return int(cache.get_seq_length(index)) > 0
    except (AttributeError, TypeError, IndexError):
        return True  # unknown cache type: keep it (snapshotted), never drop what may carry state


def _module_class():
    from torch import nn

    class Checkpointed(nn.Module):
        """Runs a layer's original forward; a child of the layer, so the recompute is charged to it."""

        def __init__(self, forward):
            super().__init__()
            self._forward = forward

        def forward(self, *args, **kwargs):
            return self._forward(*args, **kwargs)

        def extra_repr(self) -> str:
            return "gradient checkpointing (non-reentrant)"

    return Checkpointed


def checkpoint_layer(layer, index: int, preserve_rng_state: bool = True) -> None:
    """Make `layer` (number `index` in its stack) run under non-reentrant checkpointing in training."""
    import torch
    from torch.utils.checkpoint import checkpoint

    if isinstance(getattr(layer, "checkpointed", None), torch.nn.Module):
        return  # already checkpointed
    body = _module_class()(layer.forward)
    layer.add_module("checkpointed", body)

    def forward(*args, **kwargs):
        if not (layer.training and torch.is_grad_enabled()):
            return body(*args, **kwargs)
        kept: list = []

        def sift(v):  # GPT-2 passes its cache by position, the others by keyword
            if not _stateful(v):
                return v
            if _holds(v, index):
                kept.append(v)
                return v
            return None

        args = tuple(sift(a) for a in args)
        kwargs = {k: sift(v) for k, v in kwargs.items()}
        if "use_cache" in kwargs and not kept:
            kwargs["use_cache"] = False
        if not kept:
            return checkpoint(body, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state, **kwargs)
        snap: dict = {}
        for c in kept:
            snapshot_cache(c, snap)
        calls = [0]

        def run(*a, **k):
            if calls[0]:  # the recompute: put the cache back as this layer first saw it
                restore_cache(snap)
            calls[0] += 1
            return body(*a, **k)

        return checkpoint(run, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state, **kwargs)

    layer.forward = forward


@register
class Ckpt(Method):
    name = "ckpt"
    summary = "gradient checkpointing (non-reentrant) of every layer; combines with any method: full+ckpt"
    Config = CkptOptions
    checkpoints = True
    is_modifier = True

    def apply(self, model, family, cfg: CkptOptions):
        for layers in family.stacks(unwrap_peft(model)).values():
            for i, layer in enumerate(layers):
                checkpoint_layer(layer, i, cfg.preserve_rng_state)
        return model
