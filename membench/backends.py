"""One backend per kind of run, chosen once from the run's device and target (no torch at import).

A target is what a run's figures describe: the CPU kernels, or CUDA on a GPU, measured or predicted.

    device   target  backend     tensors          figures
    cpu      cpu     cpu         real, CPU        measured on the CPU kernels
    fake     cpu     fake-cpu    fake (no memory) the CPU kernels' saved tensors, exactly
    fake     cuda    fake-cuda   fake, ops routed the CUDA kernels' saved tensors, exactly; allocator figures
                                 to CUDA kernels  from the step's allocations replayed through its model
    cuda     cuda    cuda        real, CUDA       measured: the allocator's own figures and NVML (and the
                                                  replay of its own allocations)

A backend knows everything that differs between them: where models are built, how inputs and
weights are placed, which optimizer implementation the target runs, the modes the step runs under,
how the loss and the peaks are read, and what the figures are called. Nothing outside this module
compares device or target names; the rest of membench asks a backend (or the torch-free helpers
at the bottom, which describe a stored result).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from .devices import DEVICES, default_device
from .errors import UserError
from .gpu import specs
from .gpu.allocator import AllocatorConfig
from .gpu.predict import PredictedCuda
from .units import format_bytes, parse_bytes

# ---- what a run's figures describe -------------------------------------------------------------------------------

TARGETS = ("cpu", "cuda")


@dataclass(frozen=True)
class Target:
    kind: str  # "cpu" | "cuda"
    gpu: specs.GpuSpec | None = None  # the GPU predicted (fake) or measured on (cuda)
    measured: bool = False  # True: the figures come from the device itself
    alloc_conf: AllocatorConfig = AllocatorConfig()
    context: int | None = None  # the CUDA context a prediction adds, as given (--context); None: the GPU's

    @property
    def context_bytes(self) -> int:
        """The CUDA context a prediction adds to max reserved for nvidia-smi: --context, else the GPU table's
        typical figure (lazy module loading; docs/profiling.md says when it holds)."""
        if self.context is not None:
            return self.context
        return self.gpu.context_bytes if self.gpu is not None else 0

    @property
    def context_source(self) -> str:
        return "given (--context)" if self.context is not None else "GPU table (typical, lazy loading)"

    @property
    def predicts_cuda(self) -> bool:
        return self.kind == "cuda" and not self.measured

    @property
    def gpu_name(self) -> str | None:
        return self.gpu.name if self.gpu is not None else None


def check_target_dtype(target: Target, dtype: str) -> None:
    """Refuse a dtype a predicted GPU cannot train in (bf16 before compute capability 8.0)."""
    if target.predicts_cuda and dtype == "bf16" and target.gpu.major < 8:
        raise UserError(f"{target.gpu.name} (sm{target.gpu.major}{target.gpu.minor}) cannot train in bf16; "
                        "use fp16 or fp32, or a GPU of compute capability 8.0 or newer", field=("dtype",))


def check_target_quant(target: Target, quant) -> None:
    """Refuse a quantized base a prediction cannot size: LLM.int8()'s outlier columns on CUDA depend on the
    activations' values (bitsandbytes' MatMul8bitLt, threshold 6.0), which fake tensors do not have."""
    if quant is not None and quant.kind == "int8" and target.predicts_cuda:
        raise UserError("--quant int8 on a GPU keeps the activations' outlier columns (LLM.int8(), threshold 6.0), "
                        "whose number depends on their values: a prediction cannot size them; use nf4/fp4, "
                        "--target cpu, or measure with --device cuda", field=("quant",))


def parse_context(context: str | int | None) -> int | None:
    """--context SIZE ('1343MiB', '1.3GB', bytes) -> bytes; None stays None."""
    if context is None:
        return None
    n = parse_bytes(context)
    if n is None:
        raise UserError(f"--context {context!r}: expected a size such as 1343MiB or 1.3GiB", field=("context",))
    return n


# ---- the combination of device and target (no torch) -----------------------------------------------------------


def target_for(device: str, target: str | None = None, gpu: str | None = None, alloc_conf: str | None = None,
               real_gpu: specs.GpuSpec | None = None, context: str | int | None = None) -> Target:
    """The target of a run on `device` (cpu | fake | cuda), checking the combination.

    `real_gpu`: on device cuda, the spec of the GPU the run is on. `context`: the CUDA context a
    prediction adds (default: the GPU table's typical figure)."""
    if target is not None and target not in TARGETS:
        raise UserError(f"unknown target {target!r}; allowed: {', '.join(TARGETS)}", field=("target",))
    context = parse_context(context)
    kind = _KINDS.get(device)
    if kind is None:
        raise UserError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}", field=("device",))
    return kind.resolve(target, gpu, alloc_conf, real_gpu, context)


def _refuse_context(context, why: str) -> None:
    if context is not None:
        raise UserError("--context sets the CUDA context a prediction adds (--device fake, target cuda); " + why,
                        field=("context",))


def _env_conf() -> AllocatorConfig:
    """PYTORCH_CUDA_ALLOC_CONF as the real allocator reads it (keys the model does not know are ignored)."""
    keep = [item for item in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "").split(",")
            if item.split(":")[0].strip() in AllocatorConfig.KEYS]
    try:
        return AllocatorConfig.parse(",".join(keep))
    except UserError as exc:
        raise UserError(f"PYTORCH_CUDA_ALLOC_CONF: {exc}") from None


class Backend:
    """The base: what every backend shares. Subclasses set the class attributes and override hooks."""

    name: ClassVar[str] = ""
    device: ClassVar[str] = ""  # where tensors live
    real: ClassVar[bool] = True  # real tensors (real memory): inputs are allocated, weights can be loaded
    measures_cuda: ClassVar[bool] = False  # the CUDA allocator and NVML are read
    build_on: ClassVar[str] = "cpu"  # torch.device models are built on

    def __init__(self, target: Target):
        self.target = target
        self.routing = self.kernel = None

    @classmethod
    def resolve(cls, target, gpu, alloc_conf, real_gpu, context) -> Target:  # pragma: no cover - interface
        raise NotImplementedError

    # ---- checks ------------------------------------------------------------------------------------------------
    @staticmethod
    def check_device_dtype(dtype: str) -> None:
        """Refuse a dtype the device this process runs on cannot train in (a real GPU without bf16)."""

    def check_track_live(self, track_live: bool) -> None:
        if self.target.kind == "cuda" and not track_live:
            raise UserError("a CUDA target needs the live tracker (track_live=True)")

    def check_tensors(self, parts) -> None:
        """`parts`: (what they are, tensors) of a module and a batch given to profile_module, checked to be
        of the kind this backend runs: real tensors on its device."""
        from torch._subclasses.fake_tensor import FakeTensor

        fake = next((what for what, ts in parts if any(isinstance(t, FakeTensor) for t in ts)), None)
        if fake:
            raise UserError(f"{fake} fake tensors: pass device='fake' with the module and the batch both fake, "
                            f"or real tensors for device={self.device!r}")
        wrong = [t.device.type for _, ts in parts for t in ts if t.device.type != self.device]
        if wrong:
            raise UserError(f"device={self.device!r}, but tensors of the module or the batch are on {wrong[0]}: "
                            f"move both with .to({self.device!r}) first, or pass device={wrong[0]!r}")

    def check_snapshot(self, snapshot) -> None:
        if snapshot:
            raise UserError("--snapshot needs --device cuda (it dumps the CUDA allocator's history)")

    # ---- building ------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def building(self):
        """Where models are built (fake: on `meta`, no memory, made fake afterwards)."""
        import torch

        with torch.device(self.build_on):
            yield

    def loaded(self, model):
        """A checkpoint's model (loaded on the CPU) where this backend keeps it."""
        return model

    def input_memory(self) -> tuple[int, str] | None:
        """(bytes, what they are) the step's inputs must fit in: the memory of the device the step describes."""
        if self.target.kind == "cuda" and self.target.gpu is not None:
            gpu = self.target.gpu
            return gpu.memory_bytes, f"the {gpu.name}'s memory ({format_bytes(gpu.memory_bytes)})"
        ram = _physical_ram()
        return (ram, f"this machine's RAM ({format_bytes(ram)})") if ram else None

    def input_mode(self):
        """The mode the step's inputs are first made in: fake tensors, whose sizes are checked against
        `input_memory()` before any real input exists (fake backends keep them: they are the batch)."""
        return fake_mode()

    def place(self, model, batch: dict) -> dict:
        """Weights and inputs where the step runs them; returns the batch."""
        return batch

    # ---- the step ------------------------------------------------------------------------------------------------
    def plan(self, optimizer: str, *, track_live: bool = True, snapshot: str | None = None, progress=None,
             micro_steps: int = 1, precision=None, model=None):
        """The StepPlan (membench.profilers.step) of this backend's step with `optimizer` (a name), `micro_steps`
        forward and backward passes per optimizer step (gradient accumulation), in `precision`
        (membench.precision; a mixed one runs the forward under the target's autocast). `model`: the model the
        step runs (a prediction routes what its layers run on the target: bitsandbytes' 4-bit matmul)."""
        from . import optimizers
        from .profilers.step import StepPlan

        mixed = precision is not None and precision.mixed
        modes = self._modes() + (self._autocast_modes() if mixed else []) + self._model_modes(model)
        kind = self.target.kind
        return StepPlan(optimizer=optimizers.factory(optimizer, kind),
                        optimizer_name=optimizers.implementation(optimizer, kind), modes=modes,
                        cuda=self.measures_cuda, read_loss=self.real,
                        host_device="cpu" if self.measures_cuda else None,
                        host_state=optimizers.host_state(optimizer, kind) if kind == "cuda" else None,
                        paged_state=optimizers.paged_state(optimizer, kind) if kind == "cuda" else None,
                        steps=2 if self.target.kind == "cuda" else 1, micro_steps=micro_steps,
                        track_live=track_live, snapshot_path=snapshot, progress=progress,
                        autocast=self._autocast(precision.autocast) if mixed else None,
                        scaler=self._scaler if mixed and precision.scaler else None)

    def _modes(self) -> list:
        return []

    def _model_modes(self, model) -> list:
        """Modes a model's own layers need on this backend (entered above every other mode)."""
        return []

    # ---- mixed precision: the autocast region and the loss scaler of the device the step runs on --------------
    autocast_device: ClassVar[str] = "cpu"  # the autocast torch runs here (a CPU build: "cpu")

    def _autocast(self, dtype: str):
        from . import dtypes

        torch_dtype, device = dtypes.to_torch(dtype), self.autocast_device

        def region():
            import torch

            return torch.autocast(device, dtype=torch_dtype)

        return region

    def _autocast_modes(self) -> list:
        """Modes entered for the whole step that make the autocast regions cast as the target does."""
        return []

    def _scaler(self):
        return _stepping_grad_scaler(self.autocast_device)

    def running(self):
        """What the step runs inside (fake: the fake mode and transformers' value branches answered)."""
        return contextlib.nullcontext()

    def allocation_trace(self, step):
        """The step's time line (membench.gpu.predict.AllocationTrace): every allocation and free the live tracker
        saw up to the step's end, the kernels' own allocations on a CUDA target, and which records are gradients
        and optimizer state; None without the live tracker. The allocator model replays it; membench.depth
        extrapolates it (a step extrapolated to a deeper model holds the time line synthesized for it)."""
        if step.trace is not None:
            return step.trace
        if step.live is None:
            return None
        from .gpu.predict import AllocationTrace

        live = step.live
        return AllocationTrace(prestep=step.prestep_bytes, sizes=live.sizes, events=live.events[:step.live_end],
                               host=live.host_ids, kernel=self.kernel.events if self.kernel is not None else [],
                               marks=step.marks)

    def predicted_cuda(self, step) -> PredictedCuda | None:
        """The allocator model's figures for the step (CUDA targets), else None."""
        return None

    # ---- describing ----------------------------------------------------------------------------------------------
    @staticmethod
    def device_name() -> str | None:
        return None

    # ---- training (real steps, membench.train): what the device needs around them ------------------------------
    def synchronize(self) -> None:
        """Wait for the device's queued work (a GPU's), so a timing covers it."""

    def reset_peaks(self) -> None:
        """Start the device's peak-memory counters afresh."""

    def max_allocated(self) -> int | None:
        """The device's peak allocated bytes since reset_peaks (None: the device keeps none)."""
        return None

    def rng_devices(self) -> list:
        """The devices whose random state torch.random.fork_rng must save besides the CPU's."""
        return []


class CpuBackend(Backend):
    name = device = "cpu"

    @classmethod
    def resolve(cls, target, gpu, alloc_conf, real_gpu, context) -> Target:
        if target == "cuda":
            raise UserError("--target cuda needs --device fake (a prediction) or --device cuda (a measurement)",
                            field=("target",))
        if gpu or alloc_conf:
            raise UserError(f"{'--gpu' if gpu else '--alloc-conf'} names a CUDA setting; the CPU target has none",
                            field=("gpu" if gpu else "alloc_conf",))
        _refuse_context(context, "the CPU target has none")
        return Target("cpu", measured=True)


class _Fake(Backend):
    device = "fake"
    real = False
    build_on = "meta"

    @classmethod
    def resolve(cls, target, gpu, alloc_conf, real_gpu, context) -> Target:
        if target == "cpu":
            if gpu or alloc_conf:
                raise UserError(f"{'--gpu' if gpu else '--alloc-conf'} needs --target cuda",
                                field=("gpu" if gpu else "alloc_conf",))
            _refuse_context(context, "the CPU target has none")
            return Target("cpu")
        spec = specs.get(gpu or specs.DEFAULT_GPU)
        conf = AllocatorConfig.parse(alloc_conf) if alloc_conf is not None else _env_conf()
        return Target("cuda", spec, alloc_conf=conf, context=context)

    def __init__(self, target: Target):
        super().__init__(target)
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.mode = FakeTensorMode()

    def loaded(self, model):
        return model.to("meta")

    @contextlib.contextmanager
    def building(self):
        """On `meta`, with torch.nn.init's in-place initializers skipped for meta tensors: a meta tensor has no
        values to fill, yet each call runs its decomposition (peft's LoRA init: 0.4 s of a 70B build)."""
        import torch

        with torch.device(self.build_on), _no_meta_init():
            yield

    def check_tensors(self, parts) -> None:
        from torch._subclasses.fake_tensor import FakeTensor

        real = next((what for what, ts in parts if any(not isinstance(t, FakeTensor) for t in ts)), None)
        if real:
            raise UserError(f"device='fake' runs fake tensors, but {real} real; build the module on "
                            "torch.device('meta'), convert it with membench.backends.fakeify(module, mode) and make "
                            "the batch inside `with mode:` (mode = membench.backends.fake_mode())")

    def input_mode(self):
        return self.mode

    def place(self, model, batch):
        fakeify(model, self.mode)
        return batch

    @contextlib.contextmanager
    def running(self):
        from .backbones.fake_branches import as_in_a_real_run

        with self.mode, as_in_a_real_run():
            yield

    @staticmethod
    def device_name() -> str:
        return "fake (FakeTensorMode: shapes only, no memory)"


class FakeCpuBackend(_Fake):
    name = "fake-cpu"


class _CudaTarget(Backend):
    """What the two CUDA targets share: the kernels' own allocations and the allocator replay."""

    def _modes(self) -> list:
        from .gpu.emulation import KernelAllocations

        self.kernel = KernelAllocations(self.target.gpu)
        return [self.kernel]

    def replay(self, trace, phases: list[str], context: int | None = None) -> PredictedCuda:
        """A trace's figures under this target's allocator settings (the step's, or one membench.depth made)."""
        from .gpu.predict import predict

        return predict(trace, phases=phases, config=self.target.alloc_conf,
                       context_bytes=self.target.context_bytes if context is None else context)

    def predicted_cuda(self, step) -> PredictedCuda | None:
        """Replay the step's allocations through the allocator model."""
        trace = self.allocation_trace(step)
        if trace is None:
            return None
        context, source = self.target.context_bytes, self.target.context_source
        if step.nvml.get("context_bytes") is not None:  # --device cuda: the context as NVML measured it
            context, source = step.nvml["context_bytes"], f"measured (NVML, {step.nvml['context_source']})"
        replayed = self.replay(trace, step.phases, context)
        return dataclasses.replace(
            replayed, context_source=source, gpu=self.target.gpu_name, paged_bytes=step.paged_bytes,
            nvidia_smi_bytes=replayed.nvidia_smi_bytes + step.paged_bytes,
            sdpa_backends=dict(self.routing.choices) if self.routing is not None else {},
            kernel_allocations=[{"label": label, "bytes": n, "kind": kind, "phase": ph}
                                for _pos, n, kind, label, ph in trace.kernel if kind == "persistent"],
            # the table's context is a typical figure; nvidia-smi adds what the allocator model leaves out
            approximate=(["context_bytes"] if source.startswith("GPU table") else []) + ["nvidia_smi_bytes"])


class FakeCudaBackend(_CudaTarget, _Fake):
    name = "fake-cuda"

    def _autocast_modes(self) -> list:
        from .gpu.autocast import CudaAutocastPolicy

        return [CudaAutocastPolicy()]  # CPU autocast casts as CUDA's does (membench/gpu/autocast.py)

    def _model_modes(self, model) -> list:
        if model is None or not any(hasattr(p, "quant_state") for p in model.parameters()):
            return []
        from .gpu.bnb import CudaGemm4bit

        return [CudaGemm4bit(self.target.gpu)]  # bitsandbytes' 4-bit layers: what its CUDA dispatch allocates

    def _modes(self) -> list:
        from .gpu.emulation import CudaRouting

        self.routing = CudaRouting(self.target.gpu)
        return [self.routing, *super()._modes()]


class CudaBackend(_CudaTarget):
    name = device = "cuda"
    measures_cuda = True
    build_on = "cuda"
    autocast_device = "cuda"

    @classmethod
    def resolve(cls, target, gpu, alloc_conf, real_gpu, context) -> Target:
        if target == "cpu":
            raise UserError("--device cuda measures the GPU; for the CPU target use --device cpu or fake",
                            field=("target",))
        if gpu:
            raise UserError("--device cuda measures the GPU it runs on; --gpu names a GPU to predict with "
                            "--device fake", field=("gpu",))
        if alloc_conf:
            raise UserError("--device cuda: set PYTORCH_CUDA_ALLOC_CONF before starting instead of --alloc-conf",
                            field=("alloc_conf",))
        _refuse_context(context, "--device cuda measures it")
        return Target("cuda", real_gpu, measured=True, alloc_conf=_env_conf())

    @staticmethod
    def check_device_dtype(dtype: str) -> None:
        import torch

        if dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError(f"this GPU ({torch.cuda.get_device_name()}) cannot run bf16; use fp16 or fp32")

    def check_snapshot(self, snapshot) -> None:
        pass

    def loaded(self, model):
        return model.cuda()

    def place(self, model, batch):
        import torch

        batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        # the step starts as in a fresh training process: what building cached (initialisation
        # temporaries) goes back, so reserved memory is the weights' segments, as the model assumes
        torch.cuda.empty_cache()
        return batch

    @staticmethod
    def device_name() -> str | None:
        import torch

        try:
            return torch.cuda.get_device_name()
        except Exception:  # noqa: BLE001 - best effort: a failed run may have failed because CUDA did not start
            return None

    # training: real steps on the GPU
    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize()

    def reset_peaks(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats()

    def max_allocated(self) -> int | None:
        import torch

        return torch.cuda.max_memory_allocated()

    def rng_devices(self) -> list:
        import torch

        return [torch.cuda.current_device()]


_KINDS: dict[str, type[Backend]] = {"cpu": CpuBackend, "fake": _Fake, "cuda": CudaBackend}


# ---- choosing one ------------------------------------------------------------------------------------------------


def check_device(device: str | None) -> str:
    """`device`, or the default one, checked: known, and a GPU visible for cuda."""
    device = device or default_device()
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}", field=("device",))
    if _KINDS[device].measures_cuda:
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible here; use --device fake (no memory) or cpu",
                            field=("device",))
    return device


def choose(device: str | None = None, target: str | None = None, gpu: str | None = None,
           alloc_conf: str | None = None, context: str | int | None = None, dtype: str | None = None) -> Backend:
    """The backend of a run: its device checked (a GPU must be visible for cuda, and run `dtype`), its target
    resolved."""
    device = check_device(device)
    if dtype is not None:  # before anything else touches the device
        _KINDS[device].check_device_dtype(dtype)
    real_gpu = real_gpu_spec() if _KINDS[device].measures_cuda else None
    tgt = target_for(device, target, gpu, alloc_conf, real_gpu, context)
    if device == "fake":
        return (FakeCudaBackend if tgt.kind == "cuda" else FakeCpuBackend)(tgt)
    return _KINDS[device](tgt)


def for_tensors(device_type: str) -> Backend:
    """The backend of a step on tensors already on `device_type` (a torch.device's type): cuda or cpu."""
    return choose("cuda" if device_type == "cuda" else "cpu")


def for_spec(spec) -> Backend:
    """The backend of a RunSpec (membench.spec)."""
    return choose(spec.device, spec.target, spec.gpu, spec.alloc_conf, spec.context, spec.dtype)


def training(device: str | None, dtype: str | None = None) -> Backend:
    """The backend a training run uses: real tensors only (cpu or cuda; default cuda when a GPU is here)."""
    if device is None:  # training needs real tensors: the GPU when this process can run CUDA, else the CPU
        device = "cuda" if needs_gpu(default_device()) else "cpu"
    if device not in _KINDS or not _KINDS[device].real:
        raise UserError(f"--device {device!r}: training runs on real tensors; allowed: "
                        f"{', '.join(d for d, k in _KINDS.items() if k.real)}", field=("device",))
    return choose(device, dtype=dtype)


def real_gpu_spec() -> specs.GpuSpec:
    """The table entry of the GPU this process runs on (or one made from its properties)."""
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    name = torch.cuda.get_device_name()
    spec = specs.match_device_name(name, props.total_memory, (props.major, props.minor))
    if spec is not None:
        return spec
    return specs.GpuSpec(name.lower().replace(" ", "-"), name, props.major, props.minor, props.total_memory,
                         specs.UNKNOWN_GPU_CONTEXT)


def fake_mode():
    """A FakeTensorMode of the kind fake runs use (for building your own fake module and batch)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode()


def fakeify(module, mode):
    """Swap every meta parameter/buffer for a fake CPU tensor (tied weights stay tied).

    `.to()` on fake parameters fails (swap_tensors refuses them), so models are
    built on meta and converted once, here. What a parameter holds as attributes (a quantized weight's
    scales: membench.profilers.weights) is converted with it.
    """
    import torch

    from .profilers.weights import convert_attached, relink_modules

    cpu = torch.device("cpu")
    memo: dict[int, torch.Tensor] = {}
    held: dict[int, object] = {}

    def to_fake(t):
        if t.device.type == "meta":
            return mode.fake_tensor_converter.from_meta_and_device(mode, t, cpu)
        return mode.from_tensor(t)

    def fake(t, param: bool):
        if id(t) not in memo:
            f = to_fake(t.data if param else t)
            memo[id(t)] = torch.nn.Parameter(f, requires_grad=t.requires_grad) if param else f
            if param:
                convert_attached(t, memo[id(t)], to_fake, held)
        return memo[id(t)]

    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = fake(p, True)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = fake(b, False)
    if held:
        relink_modules(module, held)
    return module


@contextlib.contextmanager
def _no_meta_init():
    """torch.nn.init's in-place initializers return a meta tensor untouched (any other tensor is initialized)."""
    from torch.nn import init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}

    def skipping(fn):
        def initializer(tensor, *args, **kwargs):
            return tensor if getattr(tensor, "is_meta", False) else fn(tensor, *args, **kwargs)

        return initializer

    for n, fn in saved.items():
        setattr(init, n, skipping(fn))
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


def _stepping_grad_scaler(device: str):
    """torch's GradScaler, whose optimizer always steps, as in a step without inf/NaN gradients: the profiled
    step is a training step that updates (a skipped one would allocate no optimizer state), on every backend
    alike (fake tensors cannot answer the found_inf flag the real one reads with .item()). Every tensor it
    makes (scale, growth tracker, inverse scale, found_inf per device) is made as in a real step."""
    import torch

    class SteppingGradScaler(torch.amp.GradScaler):
        def _maybe_opt_step(self, optimizer, optimizer_state, *args, **kwargs):
            return optimizer.step(*args, **kwargs)  # (a real one reads found_inf with .item(): no tensor made)

    return SteppingGradScaler(device)


def _physical_ram() -> int | None:
    """This machine's RAM in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# ---- devices by name, for the code that holds only a name (no torch) ---------------------------------------------


def needs_gpu(device: str | None) -> bool:
    """A run on `device` occupies a GPU (sweep executors reserve one)."""
    return device in _KINDS and _KINDS[device].measures_cuda


def runs_real_tensors(device: str | None) -> bool:
    return device in _KINDS and _KINDS[device].real


def device_name(device: str | None) -> str | None:
    """What provenance calls the device, without starting anything: a GPU's name once CUDA runs here."""
    if device == "fake":
        return _Fake.device_name()
    if needs_gpu(device):
        import sys

        if "torch" in sys.modules:
            return CudaBackend.device_name()
    return None


# ---- what a stored result describes (torch-free: the report and the CLI's tables) -------------------------------


class _Words(NamedTuple):
    record: str  # a result's provenance["target"]
    caption: str  # the caption of `membench run`'s table
    label: str | None  # the report's device label; None: the device and its name ("cuda (NVIDIA H200)")


_FAKE = "fake tensors, no memory used"
_FAKE_CPU = _Words("CPU kernels (fake tensors, exact)",
                   "target: CPU kernels, predicted exactly with fake tensors (--target cuda for a GPU)",
                   f"predicted for CPU kernels ({_FAKE})")
# by the backend a stored run's device and target name; {gpu}: the target's GPU
_WORDING: dict[str, _Words] = {
    "cpu": _Words("CPU kernels, measured", "target: CPU, measured", None),
    "fake-cpu": _FAKE_CPU,
    "fake": _FAKE_CPU._replace(label=f"fake ({_FAKE})"),  # stored before targets existed (schema < 3): CPU kernels
    "fake-cuda": _Words("CUDA on {gpu}, predicted",
                        "target: CUDA on {gpu}, predicted without a GPU: saved tensors exact (CUDA kernels), "
                        "allocator figures from the caching-allocator model",
                        f"predicted for CUDA {{gpu}} ({_FAKE})"),
    "cuda": _Words("CUDA on {gpu}, measured", "target: CUDA, measured on {gpu}", None),
}
FORMS = _Words._fields


def describe(device: str, target: str | None = None, gpu: str | None = None, *, name: str = "",
             form: str = "label") -> str:
    """What a run's figures describe, in the words of `form`: the one place they are written.

        record   a result's provenance["target"]:  CUDA on a100-80gb, predicted
        caption  `membench run`'s table caption:   target: CUDA on a100-80gb, predicted without a GPU: ...
        label    the report's device labels:       predicted for CUDA a100-80gb (fake tensors, no memory used);
                                                   a measured run is its device (named `name`): cuda (NVIDIA H200)

    `device`, `target` and `gpu` as a result holds them (target None or "": stored before targets existed)."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; allowed: {', '.join(FORMS)}")
    if device == "fake":
        kind = {"cuda": "fake-cuda", "cpu": "fake-cpu"}.get(target or "", "fake")
    else:
        kind = "cuda" if target == "cuda" else "cpu"
    words = getattr(_WORDING[kind], form)
    if words is None:
        return f"{device} ({name})" if name and name != device else device
    return words.format(gpu=gpu)


def how(result) -> str:
    """'predicted' (fake tensors) or 'measured' (a real device)."""
    return "predicted" if result.device == "fake" else "measured"


def measured_on_gpu(result) -> bool:
    return result.target == "cuda" and result.device == "cuda"


def needs(result) -> tuple[int, str, str]:
    """The one figure to compare with the target's memory: (bytes, which figure it is, measured or predicted).

    A CUDA target needs what nvidia-smi shows at the peak: the allocator's reserved memory (its cache
    included) plus the CUDA context. A CPU target needs the step's estimated peak (parameters, buffers,
    inputs, optimizer state and the live peak of the step's other tensors)."""
    if measured_on_gpu(result):
        if result.nvml.get("available") and result.nvml.get("peak_used_bytes"):
            return result.nvml["peak_used_bytes"], "nvidia-smi", how(result)
        if result.cuda.get("max_reserved_bytes") is not None:  # no NVML: the context is the GPU table's
            predicted = result.predicted_cuda.context_bytes if result.predicted_cuda is not None else 0
            context = result.cuda.get("context_bytes", predicted)
            return result.cuda["max_reserved_bytes"] + context, "max reserved + ~context", how(result)
    if result.target == "cuda" and result.predicted_cuda:
        return result.predicted_cuda.nvidia_smi_bytes, "nvidia-smi", how(result)
    return result.estimated_peak_bytes, "estimated peak", how(result)


def where(result) -> str:
    """Where the answer is for: the GPU of a CUDA target, else cpu."""
    return (result.gpu or "the GPU") if result.target == "cuda" else "cpu"
