"""The classification head a method trains with the base frozen (shared by the methods; no registry entry)."""

from __future__ import annotations


def train_task_head(model, family) -> list[str]:
    """Make a classification model's (randomly initialised) head trainable; returns the head module names.

    The names are the family's (`Family.head_names`). Causal/seq2seq LM heads are pre-trained (tied to
    the embeddings) and stay frozen.
    """
    if family.task != "classification":
        return []
    names = []
    for name, child in model.named_children():
        if name in family.head_names:
            for p in child.parameters():
                p.requires_grad_(True)
            names.append(name)
    return names
