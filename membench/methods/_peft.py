"""What the peft-based methods share (no registry entry)."""

from __future__ import annotations


def peft_task_type(family) -> str:
    """peft's task type for the family's head: CAUSAL_LM, SEQ_2_SEQ_LM or SEQ_CLS."""
    return {"causal-lm": "CAUSAL_LM", "seq2seq-lm": "SEQ_2_SEQ_LM"}.get(family.task, "SEQ_CLS")
