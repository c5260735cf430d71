"""What one run is: the run description every entry point builds, and the method it names (no torch).

    RunSpec(model="opt-1.3b", method="lora+ckpt", batch_size=8, seq_len=512, dtype="bf16", ...)

The command line (`membench run`, `fit`, `sweep`, `verify`), a sweep's grid, `fit`'s probes, `train`
and the Python API all build one; the runner takes it (`runner.profile(spec)`), sweep workers receive
its dict, and the results database stores that dict as the run's config. Every option is one field
here, with its default and its description: the CLI flags and their help are generated from the
fields (membench/cli/options.py), so adding a run option is a field, the code that uses it and,
optionally, `cli=True`.

`validate()` checks every field once, without torch, and names the field (its flag) in each error.
What only a built model can tell (a method's targets, a checkpoint's config) is checked when it is
built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from . import __version__, optimizers
from . import precision as precision_table
from .errors import UserError

DEFAULT_SEQ_LEN = 512
ATTENTION = ("eager", "sdpa")


def option(default=None, help: str = "", *, flag: str | None = None, short: str | None = None,
           cli: bool = True, factory=None, **more):
    """A run option: its default and its description (the CLI flag's help). `flag`: when not --NAME;
    `cli=False`: no flag; `more`: `aliases` (more flags), `comma=True` (a list given as a,b,c)."""
    meta = {"help": help, "flag": flag, "short": short, "cli": cli, **more}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(name: str, cls: type | None = None) -> str:
    """The command-line flag of a field: batch_size -> --batch-size (or the field's own `flag`)."""
    fields = {f.name: f for f in dataclasses.fields(cls or RunSpec)}
    f = fields.get(name)
    return (f.metadata.get("flag") if f is not None else None) or "--" + name.replace("_", "-")


# ---- the method a run names --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """A method with its modifiers, parsed once: `lora + ckpt`, `lora+ckpt` -> base 'lora', modifiers ('ckpt',).

    The name is canonical: no spaces, modifiers in alphabetical order (they are applied in that order,
    and none depends on another's place), each once. Whether each part is registered, and a method
    or a modifier, is the registry's to say (`membench.methods.resolve`)."""

    base: str
    modifiers: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | MethodSpec) -> MethodSpec:
        if isinstance(text, MethodSpec):
            return text
        parts = [p.strip() for p in str(text).split("+")]
        if not parts[0]:
            raise UserError(f"empty method name in {text!r}; give a method, e.g. lora or lora+ckpt",
                            field=("method",))
        if any(not p for p in parts[1:]):
            raise UserError(f"method {text!r}: an empty modifier after '+'", field=("method",))
        mods = parts[1:]
        twice = next((m for m in mods if mods.count(m) > 1), None)
        if twice is not None:
            raise UserError(f"modifier {twice!r} is given twice in {text!r}", field=("method",))
        return cls(parts[0], tuple(sorted(mods)))

    @property
    def name(self) -> str:
        return "+".join((self.base, *self.modifiers))

    def with_modifier(self, name: str) -> MethodSpec:
        return self if name in self.modifiers else MethodSpec(self.base, tuple(sorted((*self.modifiers, name))))

    def __str__(self) -> str:
        return self.name


def canonical_method(text: str) -> str:
    return MethodSpec.parse(text).name


# ---- the run description -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """Everything that identifies one profiled run, with its defaults. Its key hashes all of it."""

    model: str | None = option(None, "named model (see `membench list`)", short="-m")
    method: str = option("full", "method, optionally with modifiers: lora, full+ckpt")
    batch_size: int = option(8, "sequences per step", short="-b")
    seq_len: int | None = option(None, f"tokens per sequence (default {DEFAULT_SEQ_LEN}; not for image models)",
                                 short="-s", what="sequence length")
    dtype: str | None = option(None, "weights' dtype: {dtypes} (default: --precision's; fp32)")
    device: str | None = option(None, "cpu, fake or cuda (default: cuda if present, else fake)")
    attn: str = option("sdpa", "attention implementation: eager or sdpa")
    overrides: dict[str, Any] = option(help="config KEY=VALUE (repeatable)", flag="--override", factory=dict)
    method_options: dict[str, Any] = option(help="method option KEY=VALUE (repeatable)", flag="--option",
                                            short="-o", factory=dict)
    tiny: bool = option(False, "tiny what-if models (the family's tiny config; tests, smoke runs)", cli=False,
                        flag="--tiny/--no-tiny")
    seed: int = option(0, "random seed of the inputs and weights")
    pretrained: str | None = option(None, "local checkpoint folder (offline)")
    target: str | None = option(None, "what --device fake predicts: cuda (default) or cpu")
    gpu: str | None = option(None, "the GPU a cuda target predicts (default {default_gpu}; `membench list --gpus`)")
    optimizer: str = option(optimizers.DEFAULT, "{optimizers}")
    alloc_conf: str | None = option(None, "allocator options as PYTORCH_CUDA_ALLOC_CONF, e.g. "
                                          "expandable_segments:True")
    image_size: int | None = option(None, "image models: pixels per side (default the config's, 224); the "
                                          "sequence is its patches + 1")
    context: str | None = option(None, "the CUDA context a prediction adds for nvidia-smi, e.g. 1343MiB "
                                       "(default: the GPU table's typical figure, lazy loading; docs/profiling.md)",
                                 file_types=(str, int))
    precision: str | None = option(None, "training precision, Lightning's names: {precisions} (default: --dtype's "
                                         "true precision; docs/recipes.md)")
    grad_accum: int = option(1, "gradient accumulation: micro-steps of --batch-size each per optimizer step "
                                "(their gradients stay allocated through the next micro-step's forward)",
                             what="gradient accumulation")
    quant: str | None = option(None, "quantized frozen base (QLoRA), bitsandbytes: nf4, fp4 or int8 (docs/methods.md)")
    quant_double_quant: bool = option(False, "4-bit: quantize the absmax too (QLoRA's double quantization; "
                                             "off by default, as in BitsAndBytesConfig)",
                                      flag="--quant-double-quant/--no-quant-double-quant")
    quant_blocksize: int | None = option(None, "4-bit: weights per absmax (default 64)", what="quant block size")
    quant_compute_dtype: str | None = option(None, "the dtype 4-bit layers compute in (default: the run's compute "
                                                   "dtype: autocast's under a mixed precision, else --dtype)")
    kbit_ckpt: bool = option(True, "with --quant: prepare_model_for_kbit_training's gradient checkpointing "
                                   "(peft's default: on)", flag="--kbit-ckpt/--no-kbit-ckpt")

    # fields added after runs were stored -> the value that leaves them out of the key (stored runs keep theirs)
    _LATER = {"image_size": None, "context": None, "grad_accum": 1, "precision": None, "quant": None,
              "quant_double_quant": False, "quant_blocksize": None, "quant_compute_dtype": None, "kbit_ckpt": True}

    def __post_init__(self):
        object.__setattr__(self, "method", canonical_method(self.method))
        if self.dtype is None:  # the weights' dtype follows the precision (fp32 without one)
            object.__setattr__(self, "dtype", precision_table.default_weights(self.precision) or "fp32")
        object.__setattr__(self, "overrides", dict(self.overrides or {}))
        object.__setattr__(self, "method_options", dict(self.method_options or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes) -> RunSpec:
        return dataclasses.replace(self, **changes)

    @property
    def method_spec(self) -> MethodSpec:
        return MethodSpec.parse(self.method)

    def key(self, version: str = __version__) -> str:
        """A stable hash of the full description and the package version (order of dict keys does not matter)."""
        spec = self.to_dict()
        for later, unset in self._LATER.items():
            if spec[later] == unset:
                del spec[later]
        blob = json.dumps({"spec": spec, "membench": version}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def __hash__(self) -> int:  # dict fields are not hashable; the key is
        return hash(self.key())

    @property
    def training_precision(self) -> precision_table.Precision:
        """The precision the run trains in: --precision, else --dtype's true precision (fp32: 32-true)."""
        from . import dtypes

        return precision_table.resolve(self.precision, dtypes.short(self.dtype))[0]

    @property
    def quantized(self):
        """The quantized base (membench.quant.Quant) the run builds, or None: --quant and its options, resolved."""
        from . import quant

        return quant.resolve(self)

    @property
    def seq_label(self) -> str:
        """The sequence as a table shows it: '128', or an image model's '224px' (its own size: 'image')."""
        if self.seq_len is not None:
            return str(self.seq_len)
        return f"{self.image_size}px" if self.image_size is not None else "image"

    @property
    def label(self) -> str:
        length = f"s{self.seq_len}" if self.seq_len is not None else self.seq_label
        return f"{self.model} {self.method} b{self.batch_size} {length} {self.dtype}"

    # ---- checks ------------------------------------------------------------------------------------------------
    def validate(self) -> RunSpec:
        """Every field checked once (no torch): each error names its field. Returns the spec with the
        dtype spelled as results spell it (bf16, fp32, ...)."""
        from . import dtypes
        from .backends import check_target_dtype, check_target_quant, target_for
        from .devices import DEVICES, default_device

        for name in ("batch_size", "seed", "grad_accum"):
            _integer(name, getattr(self, name), positive=name != "seed")
        for name in ("seq_len", "image_size", "quant_blocksize"):
            if getattr(self, name) is not None:
                _integer(name, getattr(self, name), positive=True)
        if not self.model and not self.pretrained:
            raise UserError("give a model name (see `membench list`) or a checkpoint folder (--pretrained PATH)",
                            field=("model",))
        if self.model and self.pretrained:
            from .result import check_model_source

            check_model_source(self.model, self.pretrained)
        dtype = _field_error("dtype", lambda: dtypes.short(self.dtype))
        precision = precision_table.resolve(self.precision, dtype)[0] if self.precision is not None else None
        if self.device is not None and self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; allowed: {', '.join(DEVICES)}", field=("device",))
        if self.attn not in ATTENTION:
            raise UserError(f"unknown attention implementation {self.attn!r}; allowed: {', '.join(ATTENTION)}",
                            field=("attn",))
        _field_error("optimizer", lambda: optimizers.check(self.optimizer))
        self.method_spec  # noqa: B018 - the method's syntax
        quant = self.quantized  # --quant and its options
        device = self.device if self.device is not None else default_device()  # what the run will use
        if device in DEVICES:
            target = target_for(device, self.target, self.gpu, self.alloc_conf, context=self.context)
            check_target_dtype(target, dtype)
            check_target_quant(target, quant)
            _field_error("optimizer", lambda: optimizers.check_target(self.optimizer, target.kind))
            if precision is not None and precision.autocast is not None:
                try:
                    check_target_dtype(target, precision.autocast)
                except UserError as exc:
                    raise UserError(f"--precision {precision.name} computes in {precision.autocast}: {exc} "
                                    "(in mixed precision: 16-mixed)", field=("precision",)) from None
        spec = self if dtype == self.dtype else self.replace(dtype=dtype)
        return spec if precision is None or precision.name == self.precision else spec.replace(precision=precision.name)

    def on_cpu_kernels(self) -> RunSpec:
        """The spec predicting the CPU kernels on fake tensors (nothing allocated): its CUDA settings dropped.
        A sweep's preflight builds every model this way."""
        return self.replace(device="fake", target="cpu", gpu=None, alloc_conf=None, context=None)


def _integer(name: str, value, positive: bool) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int) or (positive and value <= 0)
    if bad:
        meta = {f.name: f.metadata for f in dataclasses.fields(RunSpec)}[name]
        what = meta.get("what") or name.replace("_", " ")
        raise UserError(f"{what} must be a {'positive ' if positive else ''}integer, got {value!r}", field=(name,))


def _field_error(name: str, check):
    try:
        return check()
    except UserError as exc:
        raise UserError(str(exc), field=(name,)) from None
