"""Compose a backbone, a method and the profilers into one profiled training step.

    profile("opt-1.3b", "meft3", ...)          registered backbone + registered method
    profile_module(my_model, my_batch, ...)    any nn.Module the user built

Backends: `cpu` (real tensors), `fake` (FakeTensorMode: shapes and dtypes only,
no memory; the default without a GPU), `cuda` (real tensors plus the caching
allocator and NVML).

Targets (membench.gpu.target): what the figures describe. On `fake` the default
target is `cuda` on an A100 80GB: ops are routed to the CUDA kernels' aten ops
(membench.gpu.emulation) so the ledger counts what the GPU saves, and the step's
allocations are replayed through a model of the caching allocator
(membench.gpu.predict). `target="cpu"` keeps the exact CPU kernels.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from . import backbones, dtypes, methods, optimizers
from .devices import DEVICES, default_device
from .errors import UserError
from .gpu import specs as gpu_specs
from .gpu.target import Target
from .gpu.target import resolve as _resolve_target
from .result import LayerRow, RunResult, model_name


def check_device(device: str | None) -> str:
    import torch

    device = device or default_device()
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible here; use --device fake (no memory) or cpu")
    return device


def real_gpu_spec() -> gpu_specs.GpuSpec:
    """The table entry of the GPU this process runs on (or one made from its properties)."""
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    name = torch.cuda.get_device_name()
    spec = gpu_specs.match_device_name(name, props.total_memory)
    if spec is not None:
        return spec
    return gpu_specs.GpuSpec(name.lower().replace(" ", "-"), name, props.major, props.minor, props.total_memory,
                             512 * 2**20)


def resolve_target(device: str, target: str | None = None, gpu: str | None = None,
                   alloc_conf: str | None = None) -> Target:
    """What a run on `device` will describe (see membench.gpu.target); UserError for bad combinations."""
    return _resolve_target(device, target, gpu, alloc_conf, real_gpu=real_gpu_spec() if device == "cuda" else None)


def _check_target_dtype(dtype: str, target: Target) -> None:
    if target.predicts_cuda and dtypes.canonical(dtype) == "bfloat16" and target.gpu.major < 8:
        raise UserError(f"{target.gpu.name} (sm{target.gpu.major}{target.gpu.minor}) cannot train in bf16; "
                        "use fp16 or fp32, or a GPU of compute capability 8.0 or newer")


class _StepSetup:
    """What profile_step needs for a target: the optimizer, the CUDA emulation modes, host memory."""

    def __init__(self, target: Target, optimizer: str, device: str):
        self.target = target
        self.optimizer = optimizers.implementation(optimizer, target.kind)
        self.routing = self.kernel = None
        modes = []
        if target.kind == "cuda":
            from .gpu.emulation import CudaRouting, KernelAllocations

            if target.predicts_cuda:
                self.routing = CudaRouting(target.gpu)
                modes.append(self.routing)
            self.kernel = KernelAllocations(target.gpu)
            modes.append(self.kernel)
        # a CUDA target runs a second step: the allocator figures a training loop shows once the
        # optimizer state exists (steady state), as well as the first step's
        self.kwargs = dict(optimizer=optimizers.factory(optimizer, target.kind), modes=modes,
                           host_device="cpu" if device == "cuda" else None,
                           host_state=optimizers.host_state if target.kind == "cuda" else None,
                           steps=2 if target.kind == "cuda" else 1)

    def predicted_cuda(self, step) -> dict | None:
        """Replay the step's allocations through the allocator model (target cuda only)."""
        if self.target.kind != "cuda" or step.live is None or self.kernel is None:
            return None
        from .gpu.predict import AllocationTrace, predict

        live = step.live
        trace = AllocationTrace(prestep=step.prestep_bytes, sizes=live.sizes, events=live.events[:step.live_end],
                                host=live.host_ids, kernel=self.kernel.events)
        out = predict(trace, phases=step.phases, config=self.target.alloc_conf,
                      context_bytes=self.target.gpu.context_bytes)
        out["gpu"] = self.target.gpu_name
        out["sdpa_backends"] = dict(self.routing.choices) if self.routing is not None else {}
        out["kernel_allocations"] = [{"label": label, "bytes": n, "kind": kind, "phase": ph}
                                     for _pos, n, kind, label, ph in self.kernel.events if kind == "persistent"]
        out["approximate"] = ["context_bytes", "nvidia_smi_bytes"]
        return out


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def build_device(device: str):
    """Where models are built: fake models are built on `meta` (no memory) and made fake afterwards."""
    import torch

    with torch.device({"fake": "meta", "cuda": "cuda"}.get(device, "cpu")):
        yield


def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode()


def fakeify(module, mode):
    """Swap every meta parameter/buffer for a fake CPU tensor (tied weights stay tied).

    `.to()` on fake parameters fails (swap_tensors refuses them), so models are
    built on meta and converted once, here.
    """
    import torch

    cpu = torch.device("cpu")
    memo: dict[int, torch.Tensor] = {}

    def fake(t, param: bool):
        if id(t) not in memo:
            f = mode.fake_tensor_converter.from_meta_and_device(mode, t.data if param else t, cpu)
            memo[id(t)] = torch.nn.Parameter(f, requires_grad=t.requires_grad) if param else f
        return memo[id(t)]

    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = fake(p, True)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = fake(b, False)
    return module


def _fake_cache(model, family, config) -> dict:
    """On fake tensors, a decoder without a KV cache gets one that stores nothing (membench.backbones.cache):
    the causal mask is then dropped as in the real run. Prompt learning (prefix) brings its own cache."""
    from .backbones.cache import cache_argument, no_store_cache
    from .methods.base import unwrap_peft

    if not family.decoder or getattr(config, "use_cache", False):
        return {}
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return {}
    name = cache_argument(unwrap_peft(model))
    return {name: no_store_cache()} if name else {}


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


def build(model: str | None, method: str, *, dtype: str = "fp32", device: str = "fake", attn: str = "sdpa",
          overrides: dict | None = None, method_options: dict | None = None, pretrained: str | None = None,
          config=None):
    """Build (backbone model, trainable model, family, config, method config). Call inside `build_device()`."""

    if config is None:
        spec = backbones.get(model) if model and not pretrained else None
        config = backbones.make_config(spec, overrides, attn=attn, pretrained=pretrained)
    family = backbones.family_for(config.model_type)
    method_obj, cfg, modifiers = methods.configs(method, family, method_options)
    torch_dtype = dtypes.to_torch(dtype)
    config.dtype = torch_dtype  # transformers builds/loads in config.dtype (a checkpoint's config names one)
    with _default_dtype(torch_dtype):
        try:
            if pretrained and device != "fake":
                base = family.load_pretrained(pretrained, config).to(torch_dtype)
            else:
                base = family.build(config)
        except (ValueError, TypeError, AssertionError) as exc:
            raise UserError(f"cannot build {model or pretrained} with this config: {str(exc).splitlines()[0]}") from None
        if device == "cuda" and pretrained:
            base = base.cuda()
        elif device == "fake" and pretrained:
            base = base.to("meta")
        for p in base.parameters():
            p.requires_grad_(False)
        trained = method_obj.apply(base, family, cfg)
        for mod, mod_cfg in modifiers:
            trained = mod.apply(trained, family, mod_cfg)
    cfg.modifiers = modifiers  # (modifier, its config) pairs, for the run's resolved options
    return base, trained, family, config, cfg


DEFAULT_SEQ_LEN = 512


def _quiet_third_party(fn):
    """The API boundary: transformers' and peft's deprecation notices (e.g. `is_gradient_checkpointing`,
    raised inside peft) are not the user's to act on; membench's own warnings and errors still show."""
    import functools
    import warnings

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            for module in (r"transformers(\.|$)", r"peft(\.|$)"):
                warnings.filterwarnings("ignore", category=FutureWarning, module=module)
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
            return fn(*args, **kwargs)

    return wrapper


def sequence_length(config, seq_len: int | None, image_size: int | None = None, name: str = "the model") -> int:
    """The sequence a step runs: `seq_len` (default 512) for text models, the patches + 1 of an image model
    (checked against `seq_len` if one is given; `image_size` is applied to the config here)."""
    family = backbones.family_for(config.model_type)
    if image_size is not None:
        if family.modality != "image":
            raise UserError(f"--image-size applies to image models; {name} reads text (give --seq-len)")
        _positive("image size", image_size)
        if image_size % config.patch_size:
            raise UserError(f"--image-size {image_size} is not a multiple of the patch size {config.patch_size}")
        config.image_size = image_size
    fixed = family.sequence_length(config)
    if fixed is None:
        return _positive("sequence length", DEFAULT_SEQ_LEN if seq_len is None else seq_len)
    if seq_len is not None and seq_len != fixed:
        raise UserError(f"{name} is an image model: every layer sees (image_size / patch_size)^2 + 1 = {fixed} "
                        f"tokens; set --image-size (now {config.image_size}), not --seq-len")
    return fixed


@_quiet_third_party
def profile(model: str | None = "opt-125m", method: str = "full", *, batch_size: int = 8,
            seq_len: int | None = None, image_size: int | None = None,
            dtype: str = "fp32", device: str | None = None, attn: str = "sdpa",
            overrides: dict | list | None = None, method_options: dict | None = None,
            pretrained: str | None = None, seed: int = 0, snapshot: str | None = None,
            progress: Callable[[str], None] | None = None, track_live: bool = True,
            target: str | None = None, gpu: str | None = None, optimizer: str = "adamw",
            alloc_conf: str | None = None) -> RunResult:
    """Profile one training step of a registered backbone with a registered method.

    `seq_len`: tokens per sequence (default 512); image models (ViT) take `image_size`
    instead (their sequence is the patches + 1). `track_live=False` skips the live-memory tracker (faster on real CPU tensors; then
    `peak_activation_bytes` is only the saved total and weight copies are not told apart).
    `target`/`gpu`/`alloc_conf`: what the figures describe (membench.gpu.target); on
    `fake` the default is CUDA on an A100 80GB. `optimizer`: see membench.optimizers."""
    import torch

    say = progress or (lambda _msg: None)
    _positive("batch size", batch_size)
    if seq_len is not None:
        _positive("sequence length", seq_len)
    dtype = dtypes.canonical(dtype)
    device = check_device(device)
    dtypes.check_device_supports(dtype, device)
    optimizers.check(optimizer)
    tgt = resolve_target(device, target, gpu, alloc_conf)
    _check_target_dtype(dtype, tgt)
    if tgt.kind == "cuda" and not track_live:
        raise UserError("a CUDA target needs the live tracker (track_live=True)")
    if isinstance(overrides, list | tuple):
        overrides = backbones.parse_overrides(overrides)
    overrides = overrides or {}
    if not model and not pretrained:
        raise UserError("give a model name or --pretrained PATH")
    if snapshot and device != "cuda":
        raise UserError("--snapshot needs --device cuda (it dumps the CUDA allocator's history)")

    t0 = time.perf_counter()
    spec = backbones.get(model) if model and not pretrained else None
    config = backbones.make_config(spec, overrides, attn=attn, pretrained=pretrained)
    seq_len = sequence_length(config, seq_len, image_size, model or pretrained)
    limit = backbones.family_for(config.model_type).max_positions(config)
    if seq_len > limit:  # checked before anything is built (or allocated on a GPU)
        raise UserError(f"sequence length {seq_len} is longer than the model's {limit} positions")
    say("building model")
    with build_device(device):
        base, trained, family, config, cfg = build(
            model, method, dtype=dtype, device=device, attn=attn, overrides=overrides,
            method_options=method_options, pretrained=pretrained, config=config)
    batch = family.make_batch(config, batch_size, seq_len, torch.Generator().manual_seed(seed))
    mode = None
    if device == "fake":
        mode = fake_mode()
        fakeify(trained, mode)
        batch = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        batch.update(_fake_cache(trained, family, config))
    elif device == "cuda":
        batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        # the step starts as in a fresh training process: what building cached (initialisation
        # temporaries) goes back, so reserved memory is the weights' segments, as the model assumes
        torch.cuda.empty_cache()
    groups, order = layer_groups(trained, family, base)
    say("profiling one training step")
    torch.manual_seed(seed)
    from .profilers.step import profile_step

    setup = _StepSetup(tgt, optimizer, device)
    with mode if mode is not None else contextlib.nullcontext():
        step = profile_step(trained, batch, groups=groups, cuda=device == "cuda", snapshot_path=snapshot,
                            read_loss=device != "fake", track_live=track_live, **setup.kwargs)
    name = model_name(model, pretrained)
    return _result(step, order, setup, model=name, method=method, batch_size=batch_size, seq_len=seq_len,
                   dtype=dtype, device=device, attn=attn, overrides=overrides,
                   method_options=methods.options_dict(cfg, cfg.modifiers),
                   config=config.to_dict(), wall_s=time.perf_counter() - t0, extra={"pretrained": pretrained})


def profile_built(model, batch: dict, *, family, base=None, optimizer=None, device: str = "cpu",
                  name: str, method: str, dtype: str | None = None, attn: str = "sdpa",
                  overrides: dict | None = None, method_options: dict | None = None, config: dict | None = None,
                  extra: dict | None = None) -> RunResult:
    """Profile one training step of a model you built (`build`: a backbone with a method applied), on a
    batch you give, with your optimizer, on the device its tensors are on -> RunResult.

    The rows are the backbone's (embeddings, one per layer, head); `base` is the backbone inside
    `model` when a method wrapped it (default: `model`). optimizer: a function params -> torch optimizer
    (default AdamW); its state counts as the run's optimizer memory. The figures are the device's own
    (no CUDA-target emulation: that is `profile`'s, which builds the model itself). `membench train`
    profiles its first real batch with this; the step changes the model's weights and gradients as
    any training step would."""
    from .profilers.step import profile_step

    t0 = time.perf_counter()
    if device not in ("cpu", "cuda"):
        raise UserError(f"profile_built runs on real tensors; device {device!r}: allowed cpu, cuda")
    groups, order = layer_groups(model, family, base if base is not None else model)
    kwargs = {"optimizer": optimizer} if optimizer is not None else {}
    step = profile_step(model, batch, groups=groups, cuda=device == "cuda", **kwargs)
    b, s = _batch_shape(batch)
    dt = dtype or next((str(p.dtype).replace("torch.", "") for p in model.parameters()), "float32")
    return _result(step, order, model=name, method=method, batch_size=b, seq_len=s, dtype=dt, device=device, attn=attn,
                   overrides=overrides or {}, method_options=method_options or {}, config=config or {},
                   wall_s=time.perf_counter() - t0, extra=extra or {})


@_quiet_third_party
def profile_module(module, batch: Any, *, loss_fn: Callable | None = None, layers: dict | None = None,
                   device: str = "cpu", name: str | None = None, track_live: bool = True,
                   target: str | None = None, gpu: str | None = None, optimizer: str = "adamw",
                   alloc_conf: str | None = None) -> RunResult:
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
    Targets and optimizers as in `profile`.
    """
    from .profilers.step import default_loss, profile_step

    t0 = time.perf_counter()
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    optimizers.check(optimizer)
    tgt = resolve_target(device, target, gpu, alloc_conf)
    groups, order = layers, None
    if groups is not None:  # the rows you named, in your order, each kept even when it saves nothing
        order = list(dict.fromkeys(groups.values()))
    if groups is None:
        groups, order = _auto_groups(module)
    setup = _StepSetup(tgt, optimizer, device)
    step = profile_step(module, batch, loss_fn=loss_fn or default_loss, groups=groups, cuda=device == "cuda",
                        read_loss=device != "fake", track_live=track_live, **setup.kwargs)
    b, s = _batch_shape(batch)
    dt = next((str(p.dtype).replace("torch.", "") for p in module.parameters()), "float32")
    return _result(step, order, setup, model=name or type(module).__name__, method="custom", batch_size=b,
                   seq_len=s, dtype=dt, device=device, attn="", overrides={}, method_options={}, config={},
                   wall_s=time.perf_counter() - t0, extra={})


def _auto_groups(module) -> tuple[dict, list[str] | None]:
    from torch import nn

    lists = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    groups, order = {}, []
    for n, m in module.named_modules():
        groups[m] = n.split(".")[0] if n else "outside"
        if n and groups[m] not in order:
            order.append(groups[m])
    if lists:
        lname, big = max(lists, key=lambda item: len(item[1]))
        short = lname.split(".")[-1]
        for i, layer in enumerate(big):
            for m in layer.modules():
                groups[m] = f"{short}.{i}"
        top = lname.split(".")[0]
        groups[big] = f"{short}.0"  # the list container never runs forward itself
        pos = order.index(top) if top in order else len(order)
        order[pos:pos] = [f"{short}.{i}" for i in range(len(big))]
        if top not in groups.values():  # the list was top-level: all of it is in the rows now
            order.remove(top)
    return groups, order + ["outside"]


def _batch_shape(batch) -> tuple[int, int]:
    import torch

    vals = batch.values() if isinstance(batch, dict) else (batch if isinstance(batch, tuple | list) else [batch])
    for t in vals:
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            return int(t.shape[0]), int(t.shape[1]) if t.dim() >= 2 else 1
    return 0, 0


def _result(step, order, setup: _StepSetup | None = None, *, model, method, batch_size, seq_len, dtype, device, attn,
            overrides, method_options, config, wall_s, extra) -> RunResult:
    from .provenance import provenance

    if setup is None:  # a step the caller ran with its own optimizer and no emulation: its own device's figures
        setup = _StepSetup(resolve_target(device, "cpu" if device == "fake" else None), "adamw", device)
        setup.optimizer, setup.kernel = step.optimizer_name, None
    by_group = step.ledger.by_group
    names = list(order or [])
    names += [g for g in by_group if g not in names]
    keep = [g for g in names if g in by_group or g not in ("head", "outside")]  # (named rows stay at 0 B)
    rows = [LayerRow(name=g, activation_bytes=by_group.get(g, {}).get("forward", 0),
                     recompute_bytes=by_group.get(g, {}).get("recompute", 0)) for g in keep]
    modules = [{"name": m, "activation_bytes": v.get("forward", 0), "recompute_bytes": v.get("recompute", 0)}
               for m, v in step.ledger.by_module.items()]
    prov = provenance(device)
    # JSON-normal form (int dict keys -> str, dtypes -> str), so a result equals its JSON round trip
    prov["config"] = json.loads(json.dumps(config, default=str))
    prov.update({k: v for k, v in extra.items() if v is not None})
    prov["target"] = setup.target.describe()
    if "use_cache" in prov["config"]:
        prov["use_cache"] = bool(prov["config"]["use_cache"])  # training steps run without a KV cache by default
    return RunResult(
        model=model, method=method, batch_size=batch_size, seq_len=seq_len, dtype=dtypes.short(dtype),
        device=device, activation_bytes=step.activation_bytes, peak_activation_bytes=step.peak_activation_bytes,
        param_bytes=step.param_bytes, trainable_param_bytes=step.trainable_param_bytes, grad_bytes=step.grad_bytes,
        optimizer_bytes=step.optimizer_bytes, layers=rows, provenance=prov, recompute_bytes=step.recompute_bytes,
        estimated_peak_bytes=step.estimated_peak_bytes, buffer_bytes=step.buffer_bytes, input_bytes=step.input_bytes,
        weight_copy_bytes=step.ledger.weight_copy_bytes, num_params=step.num_params,
        num_trainable_params=step.num_trainable_params, peak_phase=step.peak_phase,
        peak_by_phase=step.peak_by_phase, attn=attn, overrides=dict(overrides), method_options=method_options,
        modules=modules, cuda=step.cuda, nvml=step.nvml, loss=step.loss, wall_s=round(wall_s, 3),
        target=setup.target.kind, gpu=setup.target.gpu_name, predicted_cuda=setup.predicted_cuda(step),
        optimizer=setup.optimizer, loss_kind=step.loss_kind,
    )
