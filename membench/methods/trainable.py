"""Which parameters train: every method declares it, one function sets it.

    which = method.trainable(model, family, cfg)   # after method.apply: a predicate (name, parameter) -> bool
    set_trainable(model, which)                    # requires_grad on exactly those, off on every other

The builder (runner.building) calls set_trainable once, after the method and its modifiers (each
modifier's declaration is added to the method's); `membench train` adds a classifier's head through it
too (`train_head_too`). Nothing else turns requires_grad on or off. The predicates below are the
shapes the methods use; they pick parameters by identity, so a wrapper (peft) renaming them is harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Which = Callable[[str, Any], bool]  # (parameter name, parameter) -> does it train


def set_trainable(model, which: Which) -> None:
    """Train exactly the parameters of `model` that `which` selects; freeze the rest."""
    for name, p in model.named_parameters():
        p.requires_grad_(bool(which(name, p)))


def everything(name: str, p) -> bool:
    return True


def nothing(name: str, p) -> bool:
    return False


def among(params: Iterable) -> Which:
    """These parameters (tensors), whatever they are called."""
    ids = {id(p) for p in params}
    return lambda name, p: id(p) in ids


def either(*whichs: Which) -> Which:
    """A parameter trains if any of `whichs` selects it."""
    return lambda name, p: any(w(name, p) for w in whichs)


def marked(model) -> Which:
    """The parameters that train as `model` is now: what a library that marks its own (peft) has marked."""
    return among(p for p in model.parameters() if p.requires_grad)


def task_head(model, family) -> Which:
    """A classification model's new (randomly initialised) head: its children named in `Family.head_names`.
    Causal and seq2seq LM heads are pre-trained (tied to the embeddings): nothing."""
    from .base import unwrap_peft

    if family.task != "classification":
        return nothing
    base = unwrap_peft(model)
    return among(p for name, child in base.named_children() if name in family.head_names for p in child.parameters())


def train_head_too(model, family) -> bool:
    """Training a classifier: its new head must train, also where the method's options froze it
    (`train_head=false`). Returns whether it had been frozen (the run reports it)."""
    head = task_head(model, family)
    params = [p for name, p in model.named_parameters() if head(name, p)]
    if not params or any(p.requires_grad for p in params):
        return False
    set_trainable(model, either(marked(model), head))
    return True
