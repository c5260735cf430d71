"""What the peft-based methods share (no registry entry)."""

from __future__ import annotations


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
    """peft.get_peft_model, with bitsandbytes (which peft imports to dispatch its quantized layers, where it is
    installed) imported first, offline and quietly (membench.bnb)."""
    import importlib.util

    from peft import get_peft_model as peft_get_peft_model

    if importlib.util.find_spec("bitsandbytes") is not None:
        from ..bnb import import_bitsandbytes

        import_bitsandbytes()
    return peft_get_peft_model(model, config, **kwargs)
