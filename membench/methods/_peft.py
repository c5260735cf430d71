"""What the peft-based methods share (no registry entry)."""

from __future__ import annotations


def peft_task_type(family) -> str:
    """peft's task type for the family's head: CAUSAL_LM, SEQ_2_SEQ_LM or SEQ_CLS."""
    return {"causal-lm": "CAUSAL_LM", "seq2seq-lm": "SEQ_2_SEQ_LM"}.get(family.task, "SEQ_CLS")


def default_targets(family, own: tuple[str, ...], mapping: str) -> list[str]:
    """The one target rule of every peft method: the family's own list wins (what its modules are called
    in the installed transformers); peft's `mapping` (a name in peft.utils.constants) for the family's
    model type fills in when the family names none."""
    from peft.utils import constants

    return list(own) or list(getattr(constants, mapping).get(family.model_types[0], []))
