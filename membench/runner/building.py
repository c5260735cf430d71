"""Build what a run description names: the config, the inputs, the backbone with its method applied.

    spec ──> config (named model or checkpoint, overrides) ──> sequence length (checked)
         ──> inputs (as fake tensors first: too large for the target -> refused before the build)
         ──> backbone on the backend's device ──> method, then modifiers ──> what they declare trains
             (methods.trainable.set_trainable, once; every other parameter is frozen) ──> placed for the step
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from .. import backbones, dtypes, methods
from ..backends import Backend
from ..errors import UserError
from ..methods import trainable
from ..result import check_model_source, model_name
from ..spec import DEFAULT_SEQ_LEN, MethodSpec, RunSpec
from ..units import format_bytes


@dataclass
class Built:
    """A run's model, built: what `build(spec)` returns."""

    spec: RunSpec
    backend: Backend
    model: Any  # the backbone with the method applied: what trains
    base: Any  # the backbone inside it
    family: backbones.Family
    config: Any  # the transformers config
    method_config: methods.MethodConfig
    modifier_configs: list = field(default_factory=list)  # [(modifier, its config), ...]
    batch: dict | None = None  # the step's inputs (None: built without)
    seq_len: int | None = None

    @property
    def method(self) -> MethodSpec:
        return self.spec.method_spec

    @property
    def name(self) -> str:
        """What the run's model is called (a checkpoint: its folder's name)."""
        return model_name(self.spec.model, self.spec.pretrained)

    @property
    def method_options(self) -> dict:
        """The method's resolved options, then each modifier's as `name.field`."""
        return methods.options_dict(self.method_config, self.modifier_configs)

    def described(self) -> RunSpec:
        """The spec as a result states it: the model's name, the sequence it ran, the resolved options."""
        return self.spec.replace(model=self.name, seq_len=self.seq_len, method_options=self.method_options)


class InputsTooLarge(UserError):
    """A batch whose inputs alone exceed the memory of the device the step describes (`needed_bytes`)."""

    def __init__(self, message: str, needed_bytes: int):
        super().__init__(message)
        self.needed_bytes = needed_bytes


def model_config(spec: RunSpec):
    """The transformers config of the spec's named model or local checkpoint (exactly one of the two:
    result.check_model_source, the rule `membench train` applies too), its overrides applied (with `tiny`
    on top of the family's tiny config)."""
    if not spec.model and not spec.pretrained:
        raise UserError("give a model name (see `membench list`) or a checkpoint folder (--pretrained PATH)")
    check_model_source(spec.model, spec.pretrained)
    named = backbones.get(spec.model) if spec.model else None
    overrides = spec.overrides
    if spec.tiny and named is not None:
        overrides = {**named.family.tiny(), **overrides}
    return backbones.make_config(named, overrides, attn=spec.attn, pretrained=spec.pretrained)


def sequence_length(config, seq_len: int | None, image_size: int | None = None, name: str = "the model",
                    seq_option: str = "--seq-len", image_option: str = "--image-size") -> int:
    """The sequence a step runs: `seq_len` (default 512) for text models, the patches + 1 of an image model
    (checked against `seq_len` if one is given; `image_size` is applied to the config here). seq_option,
    image_option: how messages name the two settings (a sweep's are --seq-lens, --image-sizes)."""
    family = backbones.family_for(config.model_type)
    if image_size is not None:
        if family.modality != "image":
            raise UserError(f"{image_option} applies to image models; {name} reads text (give {seq_option})")
        _positive("image size", image_size)
        if image_size % config.patch_size:
            raise UserError(f"{image_option} {image_size} is not a multiple of the patch size {config.patch_size}")
        config.image_size = image_size
    fixed = family.sequence_length(config)
    if fixed is None:
        return _positive("sequence length", DEFAULT_SEQ_LEN if seq_len is None else seq_len)
    if seq_len is not None and seq_len != fixed:
        raise UserError(f"{name} is an image model: every layer sees (image_size / patch_size)^2 + 1 = {fixed} "
                        f"tokens; set {image_option} (now {config.image_size}), not {seq_option}")
    return fixed


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


def layer_count(family, config) -> int:
    return sum(int(getattr(config, key, 0) or 0) for key in family.num_layers_key(config))


def build(spec: RunSpec, backend: Backend | None = None, *, inputs: bool = True, say=None) -> Built:
    """Build the run `spec` describes on its backend (default: the spec's own): config, inputs (unless
    `inputs=False`: a training run makes its own batches), the backbone with the method and its
    modifiers applied, placed where the step runs. The spec is taken as given (validated by the caller)."""
    from .. import backends

    backend = backend or backends.for_spec(spec)
    say = say or (lambda _msg: None)
    config = model_config(spec)
    name = model_name(spec.model, spec.pretrained)
    family = backbones.family_for(config.model_type)
    seq_len = batch = None
    if inputs:
        seq_len = sequence_length(config, spec.seq_len, spec.image_size, spec.model or spec.pretrained)
        limit = family.max_positions(config)
        if seq_len > limit:  # checked before anything is built (or allocated on a GPU)
            raise UserError(f"sequence length {seq_len} is longer than the model's {limit} positions")
        # the inputs before the model: an impossible batch is refused before a long build
        batch = make_inputs(family, config, spec, seq_len, backend)
    layers = layer_count(family, config)
    say(f"building {name} ({layers:,} layer{'s' if layers != 1 else ''})")
    with backend.building():
        base, model, method_cfg, modifier_cfgs = _model(spec, backend, family, config)
    if batch is not None:
        batch = backend.place(model, batch)
    return Built(spec=spec, backend=backend, model=model, base=base, family=family, config=config,
                 method_config=method_cfg, modifier_configs=modifier_cfgs, batch=batch, seq_len=seq_len)


def _model(spec: RunSpec, backend: Backend, family, config):
    """(backbone, the model that trains, method config, [(modifier, config)]), on the backend's device."""
    method, cfg, modifiers = methods.configs(spec.method, family, spec.method_options)
    torch_dtype = dtypes.to_torch(spec.dtype)
    config.dtype = torch_dtype  # transformers builds/loads in config.dtype (a checkpoint's config names one)
    with _default_dtype(torch_dtype):
        try:
            if spec.pretrained and backend.real:
                base = backend.loaded(family.load_pretrained(spec.pretrained, config).to(torch_dtype))
            else:
                base = family.build(config)
        except (ValueError, TypeError, AssertionError) as exc:
            raise UserError(f"cannot build {spec.model or spec.pretrained} with this config: "
                            f"{str(exc).splitlines()[0]}") from None
        quant = spec.quantized
        if quant is not None:  # the frozen base quantized as transformers and peft do it, before the method
            from ..quant.base import quantize

            _check_quantized_method(spec, quant, method, [m for m, _ in modifiers])
            head = family.head_names if family.task == "classification" else ()  # a new head trains: unquantized
            base = quantize(base, quant, skip=head)
        trained = method.apply(base, family, cfg)
        declared = [method.trainable(trained, family, cfg)]  # before modifiers: what the method itself left
        for mod, mod_cfg in modifiers:
            trained = mod.apply(trained, family, mod_cfg)
            declared.append(mod.trainable(trained, family, mod_cfg))
        which = trainable.either(*declared)
        if quant is not None:
            from ..quant.base import refuse_training_quantized

            refuse_training_quantized(trained, which, spec.method)
        trainable.set_trainable(trained, which)
    return base, trained, cfg, modifiers


def _check_quantized_method(spec: RunSpec, quant, method, modifiers) -> None:
    """What cannot run on a quantized base with peft's checkpointing on: a second checkpointing of the same
    layers (+ckpt), or a reversible method (it recomputes the layers in its own backward)."""
    if not quant.checkpointing:
        return
    twice = next((m for m in (method, *modifiers) if m.reversible or m.checkpoints), None)
    if twice is not None:
        what = "recomputes the layers in its own backward" if twice.reversible else "checkpoints the layers"
        raise UserError(f"{twice.name} {what}, and --quant's prepare_model_for_kbit_training checkpoints them too "
                        "(peft's default): add --no-kbit-ckpt", field=("kbit_ckpt",))


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def make_inputs(family, config, spec: RunSpec, seq_len: int, backend: Backend) -> dict:
    """The step's random inputs (family.make_batch), checked against the backend's memory before any is real.

    They are first made as fake tensors (shapes only, no memory); a fake backend keeps those, in its
    own FakeTensorMode; a real one makes the real ones once they are known to fit."""
    import torch

    def make(in_mode):
        with in_mode:
            return family.make_batch(config, spec.batch_size, seq_len, torch.Generator().manual_seed(spec.seed))

    sample = _what_a_sample_is(family, config, seq_len)
    try:
        shapes = make(backend.input_mode())
    except (RuntimeError, OverflowError, TypeError) as exc:  # sizes past what a tensor can index (int64)
        raise UserError(f"batch size {spec.batch_size} x {sample} cannot even be described as tensors "
                        f"({str(exc).splitlines()[0]}); lower --batch-size") from None
    needed = sum(t.numel() * t.element_size() for t in shapes.values() if isinstance(t, torch.Tensor))
    memory = backend.input_memory()
    if memory is not None and needed > memory[0]:
        knob = "--image-size" if family.modality == "image" else "--seq-len"
        raise InputsTooLarge(f"the inputs alone (batch size {spec.batch_size} x {sample}: {format_bytes(needed)}) "
                             f"exceed {memory[1]}, so the step can never run there; lower --batch-size or {knob}",
                             needed)
    return make(contextlib.nullcontext()) if backend.real else shapes


def _what_a_sample_is(family, config, seq_len: int) -> str:
    if family.modality == "image":
        return f"{config.image_size}x{config.image_size}-pixel images"
    return f"{seq_len} tokens"


def layer_groups(model, family, base_model) -> tuple[dict, list[str]]:
    """Every module -> its report row: 'embeddings', '<stack>.<i>' or 'head'; and the row order."""
    groups = {m: "head" for m in model.modules()}
    for emb in family.embeddings(base_model):
        for m in emb.modules():
            groups[m] = "embeddings"
    order = ["embeddings"]
    for stack, layers in family.stacks(base_model).items():
        for i, layer in enumerate(layers):
            name = f"{stack}.{i}"
            order.append(name)
            for m in layer.modules():
                groups[m] = name
    return groups, order + ["head", "outside"]
