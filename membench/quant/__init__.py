"""Quantized base weights (QLoRA): what `--quant` and its options mean, checked without torch.

    --quant nf4|fp4   the frozen nn.Linear layers of the base become bitsandbytes Linear4bit (packed uint8,
                      two weights per byte, one absmax per block of --quant-blocksize weights; with
                      --quant-double-quant the absmax are themselves 8-bit, one fp32 absmax per 256)
    --quant int8      they become Linear8bitLt (int8 weights, one fp32 scale per row: LLM.int8())

The base is built as transformers builds it from `BitsAndBytesConfig` (which layers, which are skipped: the
head and transformers' default skips), then `peft.prepare_model_for_kbit_training` runs (fp16/bf16 parameters
that are not 4-bit become fp32; gradient checkpointing on unless --no-kbit-ckpt), then the method.
membench/quant/base.py does it; membench/gpu/bnb.py makes fake tensors allocate what bitsandbytes' CUDA
kernels allocate. Defaults are BitsAndBytesConfig's (no double quantization) and Params4bit's (block size 64);
the compute dtype defaults to the run's: its autocast dtype under a mixed precision, else its weights' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError, one_of

KINDS = ("nf4", "fp4", "int8")
FOUR_BIT = ("nf4", "fp4")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes' 4-bit kernels take
DEFAULT_BLOCKSIZE = 64  # Params4bit's
COMPUTE_DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Quant:
    """One quantized-base setting, resolved: what the run builds."""

    kind: str  # nf4 | fp4 | int8
    double_quant: bool = False  # 4-bit: the absmax quantized again (QLoRA's double quantization)
    blocksize: int = DEFAULT_BLOCKSIZE  # 4-bit: weights per absmax
    compute: str = "fp32"  # the dtype a 4-bit layer computes in (bnb_4bit_compute_dtype)
    checkpointing: bool = True  # prepare_model_for_kbit_training's use_gradient_checkpointing

    @property
    def four_bit(self) -> bool:
        return self.kind in FOUR_BIT

    @property
    def label(self) -> str:
        """How tables show it: nf4, nf4+dq, nf4/b128, int8 (the compute dtype and checkpointing are columns of
        their own: the precision and the method)."""
        if not self.four_bit:
            return self.kind
        return self.kind + ("+dq" if self.double_quant else "") + (
            f"/b{self.blocksize}" if self.blocksize != DEFAULT_BLOCKSIZE else "")


OPTIONS = ("quant_double_quant", "quant_blocksize", "quant_compute_dtype", "kbit_ckpt")  # RunSpec's fields


def unset_options(spec) -> dict:
    """The quant options of a RunSpec as they are when not given (the fields' defaults)."""
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(spec) if f.name in OPTIONS}


def plain(spec):
    """`spec` on its plain base: no --quant, every quant option unset."""
    return spec.replace(quant=None, **unset_options(spec))


def resolve(spec) -> Quant | None:
    """The Quant a RunSpec names (None: no --quant), its options checked; each error names its flag."""
    if spec.quant is None:
        given = [f for f, unset in unset_options(spec).items() if getattr(spec, f) != unset]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} sets a quantized base's option; give --quant "
                            f"({', '.join(KINDS)}) too", field=(given[0],))
        return None
    if spec.quant not in KINDS:
        raise UserError(f"unknown --quant {spec.quant!r}; allowed: {one_of(KINDS)}", field=("quant",))
    four = spec.quant in FOUR_BIT
    four_bit_only = [f for f in ("quant_double_quant", "quant_blocksize") if getattr(spec, f) not in (False, None)]
    if not four and four_bit_only:
        raise UserError(f"--quant int8 quantizes per row (LLM.int8()): --{four_bit_only[0].replace('_', '-')} is a "
                        "4-bit option (nf4, fp4)", field=(four_bit_only[0],))
    blocksize = DEFAULT_BLOCKSIZE if spec.quant_blocksize is None else spec.quant_blocksize
    if blocksize not in BLOCKSIZES:
        raise UserError(f"--quant-blocksize {blocksize!r}: bitsandbytes' 4-bit blocks are "
                        f"{', '.join(map(str, BLOCKSIZES))}", field=("quant_blocksize",))
    compute = spec.quant_compute_dtype if spec.quant_compute_dtype is not None else default_compute(spec)
    from .. import dtypes

    try:
        compute = dtypes.short(compute)
    except UserError as exc:
        raise UserError(f"--quant-compute-dtype: {exc}", field=("quant_compute_dtype",)) from None
    if compute not in COMPUTE_DTYPES:
        raise UserError(f"--quant-compute-dtype {compute}: bitsandbytes computes in {', '.join(COMPUTE_DTYPES)}",
                        field=("quant_compute_dtype",))
    return Quant(spec.quant, bool(spec.quant_double_quant) and four, blocksize, compute, bool(spec.kbit_ckpt))


def label_of(config: dict) -> str:
    """The label (Quant.label) of a run's stored config (a RunSpec's dict), without resolving the compute dtype."""
    blocksize = config.get("quant_blocksize") or DEFAULT_BLOCKSIZE
    return Quant(config["quant"], bool(config.get("quant_double_quant")), blocksize).label


def default_compute(spec) -> str:
    """The run's compute dtype: its autocast dtype under a mixed precision, else its weights' dtype."""
    precision = spec.training_precision
    return precision.autocast if precision.mixed else spec.dtype
