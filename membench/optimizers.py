"""The optimizers a profiled step can run, as the target device runs them: one table (no torch at import).

PyTorch picks AdamW's implementation by where the tensors live: a for-loop over
the parameters on CPU tensors, `foreach` (list-wide kernels, one temporary per
parameter at once) on CUDA tensors. On a GPU, `step` counters stay in host memory
unless the implementation is fused (or capturable).

Each record is one name `--optimizer` takes. A record the target chooses for (`runs_as`) names, per target
kind, the record that target runs; every other record is one implementation: its torch class and keyword
arguments, and the state entries a GPU keeps in host memory. The checks, the help text, the factory and the
host-memory rule are derived from the table: adding an optimizer is adding a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import UserError, one_of

LR = 1e-4


@dataclass(frozen=True)
class Optimizer:
    name: str
    description: str
    torch_class: str = "AdamW"  # <module>.<torch_class>
    kwargs: dict = field(default_factory=dict)  # the implementation's keyword arguments (lr aside)
    module: str = "torch.optim"  # where the class lives (transformers.optimization: Adafactor)
    target_kwargs: dict[str, dict] = field(default_factory=dict)  # target kind -> more keyword arguments
    host_state: tuple[str, ...] = ()  # state entries a GPU keeps in host memory (0-d `step` counters)
    runs_as: dict[str, str] = field(default_factory=dict)  # target kind -> the record it runs (the target chooses)
    paged: tuple[str, ...] = ()  # state entries a GPU keeps in CUDA unified memory (bitsandbytes' paged optimizers)
    targets: tuple[str, ...] = ("cpu", "cuda")  # the target kinds that can run it as named
    instead: str = ""  # what a target that cannot run it should name instead
    hf: tuple[str, ...] = ()  # what the HF Trainer's TrainingArguments.optim calls it (--trainer-args)


OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in (
    Optimizer("adamw", "AdamW as the target runs it (CUDA: foreach, CPU: for-loop)",
              runs_as={"cuda": "adamw-foreach", "cpu": "adamw-forloop"}, hf=("adamw_torch", "adamw_hf")),
    Optimizer("adamw-foreach", "AdamW, foreach implementation", kwargs={"foreach": True}, host_state=("step",),
              hf=("adamw_torch_foreach",)),
    Optimizer("adamw-fused", "AdamW, fused kernel (state and step counters on the device)", kwargs={"fused": True},
              hf=("adamw_torch_fused",)),
    Optimizer("adamw-forloop", "AdamW, for-loop implementation", kwargs={"foreach": False}, host_state=("step",)),
    Optimizer("sgd", "plain SGD, no momentum (no optimizer state)", torch_class="SGD", hf=("sgd",)),
    # torch picks foreach for CUDA tensors and a for-loop for CPU ones; fake tensors are CPU tensors
    Optimizer("sgd-momentum", "SGD with momentum 0.9 (one momentum buffer per parameter)", torch_class="SGD",
              kwargs={"momentum": 0.9}, target_kwargs={"cuda": {"foreach": True}, "cpu": {"foreach": False}}),
    # as the HF Trainer's optim="adafactor" builds it (transformers' trainer_optimizer: _get_adafactor)
    Optimizer("adafactor", "Adafactor (transformers) as the HF Trainer runs optim=\"adafactor\": factored second "
              "moments (a row and a column per matrix), no first moment", torch_class="Adafactor",
              module="transformers.optimization", kwargs={"scale_parameter": False, "relative_step": False},
              hf=("adafactor",)),
    # bitsandbytes (as the HF Trainer's adamw_bnb_8bit, paged_adamw_8bit, paged_adamw_32bit): block-wise 8-bit
    # moments (uint8, one fp32 absmax per 256 values, a shared 256-entry map) for tensors of 4096 values or
    # more, fp32 moments below that; paged ones keep the moments in CUDA unified memory
    Optimizer("adamw-8bit", "AdamW with 8-bit block-wise moments (bitsandbytes)", torch_class="AdamW8bit",
              module="bitsandbytes.optim", hf=("adamw_bnb_8bit", "adamw_8bit")),
    Optimizer("paged-adamw-8bit", "AdamW8bit with its moments paged in CUDA unified memory (bitsandbytes)",
              torch_class="PagedAdamW8bit", module="bitsandbytes.optim", paged=("state1", "state2"),
              targets=("cuda",), instead="adamw-8bit", hf=("paged_adamw_8bit",)),
    Optimizer("paged-adamw", "32-bit AdamW with its moments paged in CUDA unified memory (bitsandbytes)",
              torch_class="PagedAdamW", module="bitsandbytes.optim", paged=("state1", "state2"),
              targets=("cuda",), instead="adamw", hf=("paged_adamw_32bit",)),
)}
DEFAULT = "adamw"


def help_text() -> str:
    """The names as a flag's help lists them: 'adamw (as the target runs it), ..., or sgd'."""
    return one_of(f"{o.name} (as the target runs it)" if o.runs_as else o.name for o in OPTIMIZERS.values())


def from_hf(name: str) -> str:
    """The --optimizer name of a TrainingArguments.optim value ('paged_adamw_8bit' -> 'paged-adamw-8bit')."""
    by_hf = {hf: o.name for o in OPTIMIZERS.values() for hf in o.hf}
    key = str(name).lower()
    if key not in by_hf:
        raise UserError(f"optim={name!r} has no membench optimizer; known: {', '.join(by_hf)}")
    return by_hf[key]


def check(name: str) -> str:
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    return name


def check_target(name: str, target: str) -> None:
    """Refuse an optimizer the target cannot run as named: paging needs CUDA unified memory."""
    record = resolve(name, target)
    if target not in record.targets:
        raise UserError(f"--optimizer {name} pages its state in CUDA unified memory; the CPU target has none "
                        f"(use --optimizer {record.instead}, or a CUDA target)")


def resolve(name: str, target: str) -> Optimizer:
    """The record target kind `target` ('cpu' | 'cuda') runs for `name`: 'adamw' on cuda -> adamw-foreach."""
    record = OPTIMIZERS[check(name)]
    return OPTIMIZERS[record.runs_as[target]] if record.runs_as else record


def implementation(name: str, target: str) -> str:
    """'adamw' on target 'cuda' -> 'adamw-foreach'; other names are already explicit."""
    return resolve(name, target).name


def factory(name: str, target: str) -> Callable:
    """params -> the optimizer `name` as the target runs it."""
    import importlib

    record = resolve(name, target)
    try:
        if record.module.startswith("bitsandbytes"):
            from .bnb import import_bitsandbytes

            import_bitsandbytes()
        cls = getattr(importlib.import_module(record.module), record.torch_class)
    except ImportError as exc:
        raise UserError(f"--optimizer {name} needs {record.module.split('.')[0]} ({exc}); "
                        f"pip install {record.module.split('.')[0]}") from None
    kwargs = {**record.kwargs, **record.target_kwargs.get(target, {})}
    if record.module.startswith("bitsandbytes"):
        return lambda params: _bitsandbytes(cls, params, kwargs)
    return lambda params: cls(params, lr=LR, **kwargs)


def _bitsandbytes(cls, params, kwargs):
    """A bitsandbytes optimizer, also on fake tensors: its constructor builds its quantization maps from Python
    lists (not on fake tensors), so it is built outside the fake mode and the maps are then made fake."""
    import warnings

    import torch
    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

    fake = next((p.fake_mode for p in params if isinstance(p, FakeTensor)), None)
    if fake is None:
        opt = cls(params, lr=LR, **kwargs)
    else:
        with unset_fake_temporarily():
            opt = cls(params, lr=LR, **kwargs)
    # a paged optimizer warns on CPU tensors that it cannot page there: a CUDA target's prediction knows
    # (the state it pages is counted apart: paged_state); a CPU target refuses paged optimizers
    step = opt.step

    def quiet_step(*args, **kw):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
            return step(*args, **kw)

    opt.step = quiet_step
    if fake is None:
        return opt
    maps = getattr(opt, "name2qmap", {})
    for key, value in list(maps.items()):
        if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
            maps[key] = fake.from_tensor(value)
    return opt


def paged_state(name: str, target: str) -> Callable | None:
    """optimizer -> the state tensors of `name` that a GPU keeps in CUDA unified memory (None: it pages nothing)."""
    keys = resolve(name, target).paged
    if not keys:
        return None
    return lambda optimizer: _state(optimizer, keys)


def _state(optimizer, keys) -> list:
    """The tensors among the state entries `keys` of every parameter of `optimizer`."""
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            out += [state[k] for k in keys if hasattr(state.get(k), "untyped_storage")]
    return out


def host_state(name: str, target: str) -> Callable:
    """optimizer -> the state tensors of `name` (as `target` runs it) that a GPU keeps in host memory."""
    keys = resolve(name, target).host_state
    return lambda optimizer: _state(optimizer, keys)
