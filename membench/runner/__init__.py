"""Compose a backbone, a method and the profilers into one profiled training step.

    profile(RunSpec(model="opt-1.3b", method="meft3", ...))   a run description (membench.spec)
    profile("opt-1.3b", "meft3", batch_size=8, ...)          the same, by keywords
    profile_built(build(spec), batch)                        a model you built, your batch and optimizer
    profile_module(my_model, my_batch, ...)                  any nn.Module the user built

    spec.validate() ──> backend (membench.backends: cpu, fake-cpu, fake-cuda, cuda)
                    ──> build (runner.building: config, inputs, model + method, placed)
                    ──> profile_step under the backend's plan ──> RunResult (runner.summary)

Targets (what the figures describe): on `fake` the default is CUDA on an A100 80GB; ops are routed
to the CUDA kernels' aten ops (membench.gpu.emulation) so the ledger counts what the GPU saves, and
the step's allocations are replayed through a model of the caching allocator (membench.gpu.predict).
`target="cpu"` keeps the exact CPU kernels.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import Any

from .. import optimizers
from ..backends import choose, fake_mode, fakeify, for_spec, real_gpu_spec
from ..result import RunResult
from ..spec import RunSpec
from .building import Built, InputsTooLarge, build, layer_groups, model_config, sequence_length

__all__ = ["profile", "profile_built", "profile_module", "run", "allocation_trace", "build", "Built", "InputsTooLarge",
           "layer_groups", "model_config", "sequence_length", "fake_mode", "fakeify", "real_gpu_spec"]


def _quiet_third_party(fn):
    """The API boundary: transformers' and peft's deprecation notices (e.g. `is_gradient_checkpointing`,
    raised inside peft) are not the user's to act on; membench's own warnings and errors still show."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            for module in (r"transformers(\.|$)", r"peft(\.|$)"):
                warnings.filterwarnings("ignore", category=FutureWarning, module=module)
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
            return fn(*args, **kwargs)

    return wrapper


@_quiet_third_party
def profile(model: str | RunSpec | None = None, method: str = "full", *, batch_size: int = 8,
            seq_len: int | None = None, image_size: int | None = None,
            dtype: str | None = None, device: str | None = None, attn: str = "sdpa",
            overrides: dict | list | None = None, method_options: dict | None = None,
            pretrained: str | None = None, seed: int = 0, snapshot: str | None = None,
            progress: Callable[[str], None] | None = None, track_live: bool = True,
            target: str | None = None, gpu: str | None = None, optimizer: str = optimizers.DEFAULT,
            alloc_conf: str | None = None, context: str | int | None = None, tiny: bool = False,
            grad_accum: int = 1, precision: str | None = None, quant: str | None = None,
            quant_double_quant: bool = False, quant_blocksize: int | None = None,
            quant_compute_dtype: str | None = None, kbit_ckpt: bool = True, exact: bool = False) -> RunResult:
    """Profile one training step of a registered backbone with a registered method.

    `model`: a RunSpec (membench.spec: the run description; the other run options are then not
    given here), or a registered name (`membench list`), or None with `pretrained`, a local checkpoint
    folder: one of the two, never both, and no default (as `membench run`: a figure is about the
    model you name). The keywords are the RunSpec's fields (their descriptions are there):
    `seq_len` (default 512; image models take `image_size`), `target`/`gpu`/`alloc_conf`/`context`
    (what the figures describe; on `fake` the default is CUDA on an A100 80GB), `optimizer`
    (membench.optimizers), `tiny` (the family's tiny config under the overrides), `grad_accum` (micro-steps
    of `batch_size` each per optimizer step: the figures cover every one of them), `precision` (Lightning's
    names: 32-true, bf16-mixed, ...; `dtype`, the weights' dtype, defaults to the precision's), `quant` and
    its options (a bitsandbytes-quantized frozen base, QLoRA: membench.quant).

    Besides the description: `snapshot` (a CUDA memory_viz snapshot path, --device cuda), `progress`
    (called with what the run is doing: building, each phase of the step, layer i/N with the time left
    at the pace so far), `track_live=False` (skips the live-memory tracker: faster on real CPU
    tensors; then `peak_activation_bytes` is only the saved total and weight copies are not told apart).

    The batch's inputs must fit in the memory of the device the step describes (the target GPU,
    this GPU, or this machine's RAM for a CPU step): a larger batch could never run there, so it is a
    UserError before anything is built. On `fake` the inputs are fake tensors too (no memory)."""
    if isinstance(model, RunSpec):
        spec = model
    else:
        if isinstance(overrides, list | tuple):
            from ..assignments import parse_assignments

            overrides = parse_assignments(overrides)
        spec = RunSpec(model=model, method=method, batch_size=batch_size, seq_len=seq_len, image_size=image_size,
                       dtype=dtype, device=device, attn=attn, overrides=overrides or {},
                       method_options=method_options or {}, pretrained=pretrained, seed=seed, target=target,
                       gpu=gpu, optimizer=optimizer, alloc_conf=alloc_conf,
                       context=None if context is None else str(context), tiny=tiny, grad_accum=grad_accum,
                       precision=precision, quant=quant, quant_double_quant=quant_double_quant,
                       quant_blocksize=quant_blocksize, quant_compute_dtype=quant_compute_dtype, kbit_ckpt=kbit_ckpt)
    return run(spec.validate(), snapshot=snapshot, progress=progress, track_live=track_live, exact=exact)


def run(spec: RunSpec, *, snapshot: str | None = None, progress: Callable[[str], None] | None = None,
        track_live: bool = True, exact: bool = False) -> RunResult:
    """profile() of a spec already validated (`spec.validate()`): `fit` checks its spec once, then probes.

    A deep model on fake tensors is profiled at a few shallow depths and extrapolated exactly
    (membench.runner.extrapolated), unless `exact`; where that cannot be done exactly, the whole model is
    profiled. `provenance.extrapolated` says which, `provenance.extrapolation` how or why not."""
    from ..depth.trace import NotAligned
    from . import extrapolated as ex

    t0 = time.perf_counter()
    depth, specs = ex.plan(spec)
    reason = ex.why_not(spec, depth, exact=exact, track_live=track_live and snapshot is None)
    if reason is None:
        try:
            return ex.profile(spec, depth, specs, progress, t0)
        except NotAligned as exc:
            reason = f"profiled in full: the shallow profiles do not extrapolate exactly ({exc})"
    result = _full(spec, snapshot, progress, track_live, t0)
    result.provenance.update(extrapolated=False, extrapolation=reason)
    return result


def _full(spec: RunSpec, snapshot, progress, track_live: bool, t0: float) -> RunResult:
    from .module import batch_shape
    from .summary import to_result

    step, built, backend, plan, order = _profiled_step(spec, snapshot=snapshot, progress=progress,
                                                       track_live=track_live)
    return to_result(step, order, built.described(), backend, plan=plan, wall_s=time.perf_counter() - t0,
                     extra={"config": built.config.to_dict(), "pretrained": spec.pretrained},
                     input_shape=batch_shape(built.batch)[2])


def allocation_trace(spec: RunSpec):
    """The time line (membench.gpu.predict.AllocationTrace; on a CUDA target what the allocator model replays) and
    phases of a validated spec's step, profiled whole (membench.depth extrapolates it)."""
    step, _built, backend, _plan, _order = _profiled_step(spec)
    return backend.allocation_trace(step), list(step.phases)


def _profiled_step(spec: RunSpec, *, snapshot: str | None = None, progress: Callable[[str], None] | None = None,
                   track_live: bool = True):
    """(StepProfile, Built, backend, StepPlan, the report's rows) of one profiled step."""
    from ..profilers.step import profile_step
    from .progress import StepProgress

    backend = for_spec(spec)
    backend.check_track_live(track_live)
    backend.check_snapshot(snapshot)
    built = build(spec, backend, say=progress)
    _check_scaled(spec, built.model)
    groups, order = layer_groups(built.model, built.family, built.base)
    plan = backend.plan(spec.optimizer, track_live=track_live, snapshot=snapshot, micro_steps=spec.grad_accum,
                        precision=spec.training_precision, model=built.model)
    tracker = None
    if progress is not None:
        layers = [layer for stack in built.family.stacks(built.base).values() for layer in stack]
        tracker = StepProgress(progress, layers, plan.steps)
        plan.progress = tracker.phase
    import torch

    torch.manual_seed(spec.seed)
    try:
        with backend.running():
            step = profile_step(built.model, built.batch, plan, groups=groups)
    finally:
        if tracker is not None:
            tracker.close()
    return step, built, backend, plan, order


def _check_scaled(spec: RunSpec, model) -> None:
    """A GradScaler unscales fp32 gradients only (torch refuses fp16 ones): 16-mixed trains fp32 weights."""
    from ..errors import UserError

    precision = spec.training_precision
    if precision.scaler:
        half = [n for n, p in model.named_parameters() if p.requires_grad and str(p.dtype) == "torch.float16"]
        if half:
            raise UserError(f"--precision {precision.name}: its GradScaler cannot unscale fp16 gradients, and "
                            f"{spec.method} trains fp16 weights ({half[0]}, ...) with --dtype {spec.dtype}; use "
                            "--dtype fp32 (fp32 master weights), or train only fp32 weights (peft keeps LoRA and IA3 "
                            "adapters in fp32, not a task head)", field=("precision",))


def profile_built(built: Built, batch: dict, *, optimizer=None, name: str | None = None,
                  extra: dict | None = None) -> RunResult:
    """Profile one training step of a model you built (`build(spec, inputs=False)`, perhaps trained a while)
    on a batch you give, with your optimizer, on the device its tensors are on -> RunResult.

    The rows are the backbone's (embeddings, one per layer, head). optimizer: a function params ->
    torch optimizer (default AdamW); its state counts as the run's optimizer memory. The figures are the
    device's own (no CUDA-target emulation: that is `profile`'s, which builds the model itself).
    `membench train` profiles its first real batch with this; the step changes the model's weights and
    gradients as any training step would. `name`: what the result calls the model (default: its name or
    its checkpoint folder's); `extra`: provenance entries of the result."""
    from ..errors import UserError
    from ..profilers.step import StepPlan, profile_step
    from .module import batch_shape
    from .summary import to_result

    t0 = time.perf_counter()
    if not built.backend.real:
        raise UserError(f"profile_built runs on real tensors; this model is built for {built.backend.name}: "
                        "build it with device cpu or cuda")
    groups, order = layer_groups(built.model, built.family, built.base)
    step = profile_step(built.model, batch, StepPlan(optimizer=optimizer, cuda=built.backend.measures_cuda),
                        groups=groups)
    b, s, shape = batch_shape(batch)
    spec = built.spec.replace(model=name or built.name, batch_size=b, seq_len=s, method_options=built.method_options)
    return to_result(step, order, spec, built.backend, wall_s=time.perf_counter() - t0,
                     extra={"config": built.config.to_dict(), "pretrained": built.spec.pretrained, **(extra or {})},
                     input_shape=shape)


@_quiet_third_party
def profile_module(module, batch: Any, *, loss_fn: Callable | None = None, layers: dict | None = None,
                   device: str = "cpu", name: str | None = None, track_live: bool = True,
                   target: str | None = None, gpu: str | None = None, optimizer: str = optimizers.DEFAULT,
                   alloc_conf: str | None = None, context: str | int | None = None) -> RunResult:
    """Profile one training step (forward, loss, backward, AdamW) of any `nn.Module` on a batch you give.

    batch: a dict (called as `module(**batch)`), a tuple or list (`module(*batch)`) or one tensor
        (`module(batch)`), already on the device (`device="cuda"`: CUDA tensors; `"fake"`: fake
        tensors of your FakeTensorMode, with the module converted, and the step runs inside it).
    loss_fn: output -> scalar loss. Default: the output's `.loss` (transformers models given
        labels); otherwise the *sum of the first output tensor*, a pseudo-loss that exercises
        backward through everything but is not your training loss: pass `loss_fn` for that.
        The result says which was used (`loss_kind`).
    layers: {module: "row name"}: the report's rows. Every module you name keeps its row,
        also when it saves nothing (0 B). A saved tensor is charged once, to the first module
        that saves it (e.g. a Linear's input saved by the ReLU before it shows on the ReLU's
        row). Default: each item of the model's largest ModuleList is a row, everything else
        is grouped by its top-level name.
    Targets and optimizers as in `profile`. The result's `input_shape` is the first input tensor's
    shape; its `seq_len` is that shape's second axis where the input has a sequence (token ids [b, s],
    hidden states [b, s, d]), else None (e.g. [b, d] features).
    """
    from ..profilers.step import default_loss, profile_step
    from .module import auto_groups, batch_shape, check_module_call
    from .summary import to_result

    t0 = time.perf_counter()
    backend = choose(device, target, gpu, alloc_conf, context)
    check_module_call(module, batch, backend)
    optimizers.check(optimizer)
    groups, order = layers, None
    if groups is not None:  # the rows you named, in your order, each kept even when it saves nothing
        order = list(dict.fromkeys(groups.values()))
    if groups is None:
        groups, order = auto_groups(module)
    plan = backend.plan(optimizer, track_live=track_live, model=module)
    step = profile_step(module, batch, plan, loss_fn=loss_fn or default_loss, groups=groups)
    b, s, shape = batch_shape(batch)
    dt = next((str(p.dtype).replace("torch.", "") for p in module.parameters()), "float32")
    spec = RunSpec(model=name or type(module).__name__, method="custom", batch_size=b, seq_len=s, dtype=dt,
                   device=backend.device, attn="")
    return to_result(step, order, spec, backend, plan=plan, wall_s=time.perf_counter() - t0, input_shape=shape)
