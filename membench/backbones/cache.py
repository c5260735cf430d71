"""A KV cache that stores nothing, for training steps on fake tensors.

Training runs without a KV cache (`use_cache=False`). Without a cache, transformers checks
the position ids for packed sequences before it drops the causal mask in favour of SDPA's
`is_causal`; on fake tensors the check cannot read values, so it keeps a dense
[b, 1, s, s] mask that the real run never builds (and a CUDA GPU would then run the
memory-efficient kernel with that mask instead of flash). Handed this cache, the model
takes its cache path, where that check is skipped, so the mask is dropped as in the real
run; `update()` returns the keys and values it is given and keeps nothing, so no K/V
outlives its layer. The runner passes it on fake tensors only.
"""

from __future__ import annotations

import inspect


def no_store_cache():
    """A transformers DynamicCache whose update() stores nothing."""
    from transformers.cache_utils import DynamicCache

    class NoStoreCache(DynamicCache):
        def update(self, key_states, value_states, *args, **kwargs):  # (layer_idx, cache kwargs)
            return key_states, value_states

    return NoStoreCache()


def cache_argument(model) -> str | None:
    """The name under which `model.forward` takes a cache (`cache` in transformers 5, else `past_key_values`)."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)
