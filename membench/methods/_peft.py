"""What the peft-based methods share (no registry entry)."""

from __future__ import annotations

import contextlib
import sys


def peft_task_type(family) -> str:
    """peft's task type for the family's head: CAUSAL_LM, SEQ_2_SEQ_LM or SEQ_CLS."""
    return {"causal-lm": "CAUSAL_LM", "seq2seq-lm": "SEQ_2_SEQ_LM"}.get(family.task, "SEQ_CLS")


def default_targets(family, roles: tuple[str, ...], mapping: str) -> list[str]:
    """The one target rule of every peft method: the modules playing `roles` in the family (`Family.roles`,
    as the installed transformers names them); peft's `mapping` (a name in peft.utils.constants) for the
    family's model type fills in when the family names none of them."""
    from peft.utils import constants

    return family.module_names(roles) or list(getattr(constants, mapping).get(family.model_types[0], []))


def get_peft_model(model, config, **kwargs):
    """peft.get_peft_model. peft imports bitsandbytes to dispatch its quantized layers wherever it is installed:
    about 2.5 s, and its CPU backend asks the Hub for a kernel. So on a model with bitsandbytes layers (--quant) it is
    imported first, offline and quietly (membench.bnb); on any other model peft is told it is absent while it
    wraps the layers (its bitsandbytes dispatchers match bitsandbytes layers only: nothing else changes)."""
    from peft import get_peft_model as peft_get_peft_model

    if not _has_bnb_layers(model):
        with _bnb_unavailable_to_peft():
            return peft_get_peft_model(model, config, **kwargs)
    from ..bnb import import_bitsandbytes

    import_bitsandbytes()
    return peft_get_peft_model(model, config, **kwargs)


def _has_bnb_layers(model) -> bool:
    return any(type(m).__module__.startswith("bitsandbytes.") for m in model.modules())


_BNB_CHECKS = ("is_bnb_available", "is_bnb_4bit_available")


@contextlib.contextmanager
def _bnb_unavailable_to_peft():
    """peft's loaded modules see bitsandbytes as absent, for the duration (their own names for peft.import_utils'
    checks are patched and restored; the cached checks themselves are left alone, so a later quantized run in this
    process finds bitsandbytes)."""
    patched = []
    for name, module in list(sys.modules.items()):
        if name.startswith("peft.") and module is not None and name != "peft.import_utils":
            for check in _BNB_CHECKS:
                if callable(getattr(module, check, None)):
                    patched.append((module, check, getattr(module, check)))
                    setattr(module, check, _absent)
    try:
        yield
    finally:
        for module, check, original in patched:
            setattr(module, check, original)


def _absent() -> bool:
    return False
