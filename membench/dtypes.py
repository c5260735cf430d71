"""The precisions a run can train in: one table of records, from which every spelling, message and help
text is derived (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError, one_of


@dataclass(frozen=True)
class Precision:
    short: str  # what results, help texts and sweeps call it
    torch_name: str  # the torch attribute (torch.bfloat16), also accepted as a spelling
    aliases: tuple[str, ...] = ()  # further spellings accepted (never listed)

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.short, self.torch_name, *self.aliases)


PRECISIONS = (
    Precision("fp32", "float32"),
    Precision("bf16", "bfloat16"),
    Precision("fp16", "float16", ("half",)),
    Precision("fp64", "float64", ("double",)),
)
_BY_SPELLING = {spelling: p for p in PRECISIONS for spelling in p.spellings}


def help_text(names: tuple[str, ...] | None = None) -> str:
    """The short names as a flag's help lists them: 'fp32, bf16, fp16 or fp64' (`names`: a subset, checked)."""
    return one_of([short(n) for n in names] if names is not None else [p.short for p in PRECISIONS])


def get(name: str) -> Precision:
    """The precision any spelling names ('BF16', ' bfloat16 '); raises UserError for anything else."""
    key = str(name).strip().lower()
    if key not in _BY_SPELLING:
        allowed = ", ".join(f"{p.short}/{p.torch_name}" for p in PRECISIONS)
        raise UserError(f"unknown dtype {name!r}; allowed: {allowed}")
    return _BY_SPELLING[key]


def canonical(name: str) -> str:
    """'bf16' -> 'bfloat16'; raises UserError for anything else."""
    return get(name).torch_name


def short(name: str) -> str:
    """'bfloat16' -> 'bf16'."""
    return get(name).short


def to_torch(name: str):
    import torch

    return getattr(torch, canonical(name))
