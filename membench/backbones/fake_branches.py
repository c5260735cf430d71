"""Branches transformers takes on tensor values, answered on fake tensors as the real run takes them.

Fake tensors have shapes, not values, so code that branches on a value cannot run, or plays safe.
Two kinds appear in the models here.

1. Attention-mask shortcuts.

transformers drops an attention mask it can see masks nothing (no padding, one sequence per row):
SDPA then runs with `is_causal` (decoders) or no mask (encoders), and a GPU can pick flash. Seeing
that needs the mask's values, which fake tensors do not have, so transformers plays safe and keeps
a dense [b, 1, q, k] mask that the real run never builds. On a CUDA target the memory-efficient
kernel then runs with it instead of flash, and every wrapper that changes how the model is called
(a modifier, a prompt cache) can flip that choice.

The batches `membench.profile` builds are unpadded, one sequence per row. Every padding mask
transformers builds for them is all ones, and every row of position ids is 0..s-1. Inside
`unpadded_batch()`, the three checks that read them get that answer:

    _ignore_causal_mask_sdpa(padding_mask, ...)         a fake padding mask is handed on as None
    _ignore_bidirectional_mask_sdpa(padding_mask, ...)  (transformers' own spelling of "all ones")
    find_packed_sequence_indices(position_ids)          fake position ids hold one sequence: None

The mask itself, where one is still needed (e.g. queries over a prefix cache), is built from the
real arguments, as in the real run. A user's own batch (`profile_module`) may be padded: it is not
run in here.

2. Scalar draws. LayerDrop (OPT, BART in transformers < 5.2x) draws `torch.rand([])` for every layer
and compares it with the drop probability, even when that is 0. Inside `scalar_draws()` a 0-dim
`torch.rand` is drawn for real, from the CPU generator as the real run draws it, and handed on as
a constant fake tensor, whose comparisons fake tensors can answer. Its 4 bytes are allocated as in
the real run.

3. Finite checks. BART's fp16 layers clamp their output if `not torch.isfinite(h).all()`. A healthy run's
activations are finite: inside `scalar_draws()` the `.all()` of a fake `isfinite` is a constant True (the
isfinite mask itself is made, and allocated, as in the real run; so is the 1-byte answer).

`as_in_a_real_run()` enters them all; fake backends run their steps inside it.
"""

from __future__ import annotations

import contextlib

_PADDING_CHECKS = ("_ignore_causal_mask_sdpa", "_ignore_bidirectional_mask_sdpa")
_PACKING_CHECK = "find_packed_sequence_indices"


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _padding_check(original):
    def check(padding_mask, *args, **kwargs):
        return original(None if _is_fake(padding_mask) else padding_mask, *args, **kwargs)

    return check


def _packing_check(original):
    def check(position_ids, *args, **kwargs):
        return None if _is_fake(position_ids) else original(position_ids, *args, **kwargs)

    return check


def _scalar_draws_mode():
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import _disable_current_modes
    from torch.utils.weak import WeakIdKeyDictionary

    finite_masks = WeakIdKeyDictionary()  # the fake isfinite() results seen (their .all() is True)

    class ScalarDraws(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.rand and _is_scalar_size(args, kwargs) and not kwargs.get("requires_grad"):
                with _disable_current_modes():  # the fake mode and the trackers: a real draw, not an allocation
                    drawn = func(*args, **kwargs)
                    value, dtype = drawn.item(), drawn.dtype
                return torch.tensor(value, dtype=dtype)  # a constant fake tensor, allocated as the draw was
            if func in (torch.Tensor.all, torch.all) and len(args) == 1 and not kwargs and args[0] in finite_masks:
                return torch.tensor(True)  # a healthy run's activations are finite
            out = func(*args, **kwargs)
            if func in (torch.isfinite, torch.Tensor.isfinite) and _is_fake(out):
                finite_masks[out] = True
            return out

    return ScalarDraws()


def _is_scalar_size(args, kwargs) -> bool:
    size = kwargs.get("size", args[0] if args else None)
    return len(args) <= 1 and isinstance(size, list | tuple) and len(size) == 0


@contextlib.contextmanager
def scalar_draws():
    """Within: a 0-dim torch.rand is a real draw, handed on as a constant fake tensor; a fake
    isfinite(x).all() is a constant True."""
    with _scalar_draws_mode():
        yield


@contextlib.contextmanager
def as_in_a_real_run():
    """Within: both of the above (the runner's fake steps)."""
    with unpadded_batch(), scalar_draws():
        yield


@contextlib.contextmanager
def unpadded_batch():
    """Within: transformers' mask shortcuts treat fake masks and position ids as an unpadded batch's."""
    from transformers import masking_utils

    wrappers = {name: _padding_check for name in _PADDING_CHECKS} | {_PACKING_CHECK: _packing_check}
    saved = {name: getattr(masking_utils, name) for name in wrappers if hasattr(masking_utils, name)}
    try:
        for name, original in saved.items():
            setattr(masking_utils, name, wrappers[name](original))
        yield
    finally:
        for name, original in saved.items():
            setattr(masking_utils, name, original)
