"""The training precisions, by Lightning's names: one table, from which every spelling, check and help text
follows (no torch).

    name        weights (default)  forward                        backward      loss
    32-true     fp32               fp32                           fp32          as is
    bf16-true   bf16               bf16                           bf16          as is
    16-true     fp16               fp16                           fp16          as is
    bf16-mixed  fp32 (master)      autocast to bf16               outside it    as is
    16-mixed    fp32 (master)      autocast to fp16               outside it    GradScaler: scaled, unscaled,
                                                                                inf-checked before the step

`--dtype` is the weights' dtype; its default follows the precision. A mixed precision over a low-precision
base (`--dtype bf16 --precision bf16-mixed`) is the usual PEFT recipe: the frozen base in bf16, the adapters
in fp32 as peft makes them (`autocast_adapter_dtype`), the forward under bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError, one_of


@dataclass(frozen=True)
class Precision:
    name: str  # Lightning's name: what --precision takes, results store and tables show
    weights: str  # the weights' dtype by default (membench.dtypes short name)
    autocast: str | None = None  # the dtype autocast computes in (None: no autocast)
    scaler: bool = False  # a GradScaler scales the loss (fp16's narrow range)
    description: str = ""

    @property
    def mixed(self) -> bool:
        return self.autocast is not None

    def allows_weights(self, dtype: str) -> bool:
        """Whether weights of `dtype` can train in this precision: a true precision only in its own dtype;
        a mixed one over fp32 master weights, or over a frozen base in its own compute dtype."""
        return dtype == self.weights if not self.mixed else dtype in ("fp32", self.autocast)


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("32-true", "fp32", description="fp32 weights, gradients, optimizer state and compute"),
    Precision("bf16-true", "bf16", description="bf16 weights, gradients, optimizer state and compute"),
    Precision("16-true", "fp16", description="fp16 weights, gradients, optimizer state and compute"),
    Precision("64-true", "fp64", description="fp64 everything"),
    Precision("bf16-mixed", "fp32", "bf16",
              description="fp32 master weights, gradients and state; forward under bf16 autocast"),
    Precision("16-mixed", "fp32", "fp16", scaler=True,
              description="fp32 master weights; forward under fp16 autocast; GradScaler-scaled loss"),
)}

# what other tools call a precision, and what it means here (a one-line hint, never a silent guess)
_HINTS = {
    "bf16": "HF's bf16=True (and Accelerate's mixed_precision='bf16') is bf16-mixed; pure bf16 is bf16-true",
    "fp16": "HF's fp16=True (and Accelerate's mixed_precision='fp16') is 16-mixed; pure fp16 is 16-true",
    "16": "Lightning's 16 is 16-mixed; pure fp16 is 16-true",
    "32": "Lightning's 32 is 32-true",
    "fp32": "fp32 is 32-true",
    "mixed": "say which: bf16-mixed or 16-mixed",
    "amp": "say which: bf16-mixed or 16-mixed",
    "half": "HF's fp16=True is 16-mixed; pure fp16 is 16-true",
    "bfloat16": "HF's bf16=True is bf16-mixed; pure bf16 is bf16-true",
    "float16": "HF's fp16=True is 16-mixed; pure fp16 is 16-true",
    "16-mixed-bf16": "bf16-mixed",
}


def help_text() -> str:
    return one_of(PRECISIONS)


def get(name: str) -> Precision:
    """The precision `name` names exactly; another tool's spelling is refused with what it means here."""
    key = str(name).strip().lower()
    if key in PRECISIONS:
        return PRECISIONS[key]
    hint = _HINTS.get(key.replace("_", "-"))
    allowed = ", ".join(PRECISIONS)
    if hint is not None:
        raise UserError(f"--precision {name!r} is ambiguous: {hint}; allowed: {allowed}", field=("precision",))
    raise UserError(f"unknown precision {name!r}; allowed: {allowed}", field=("precision",))


def default_weights(name: str | None) -> str | None:
    """The weights' dtype a precision trains by default ('bf16-true' -> 'bf16'); None for no or an unknown name
    (validate() says what is wrong with it)."""
    p = PRECISIONS.get(str(name).strip().lower()) if name is not None else None
    return p.weights if p is not None else None


def true_precision(dtype: str) -> Precision:
    """The precision whose weights and compute are all `dtype` (a run that names only --dtype)."""
    return next(p for p in PRECISIONS.values() if not p.mixed and p.weights == dtype)


def resolve(precision: str | None, dtype: str | None) -> tuple[Precision, str]:
    """(the precision, the weights' dtype) of a run giving either or both; refuses a contradiction.

    `dtype` short (membench.dtypes) or None. Only --dtype: its true precision (today's meaning). Only
    --precision: its default weights. Both: checked against each other."""
    if precision is None:
        dtype = dtype or "fp32"
        return true_precision(dtype), dtype
    p = get(precision)
    if dtype is None:
        return p, p.weights
    if not p.allows_weights(dtype):
        if p.mixed:
            why = (f"{p.name} trains fp32 master weights (or a frozen {p.autocast} base); --dtype {dtype} is "
                   f"neither")
            if p.scaler and dtype == "bf16":
                why = (f"{p.name}'s GradScaler is for fp16; a bf16-loaded model trains with bf16-mixed "
                       f"(bf16 needs no loss scaling)")
        else:
            why = f"{p.name} trains {p.weights} weights; --dtype {dtype} contradicts it (drop --dtype, or use a " \
                  f"mixed precision)"
        raise UserError(f"--precision {p.name} with --dtype {dtype}: {why}", field=("precision",))
    return p, dtype
