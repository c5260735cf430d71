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


OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in (
    Optimizer("adamw", "AdamW as the target runs it (CUDA: foreach, CPU: for-loop)",
              runs_as={"cuda": "adamw-foreach", "cpu": "adamw-forloop"}),
    Optimizer("adamw-foreach", "AdamW, foreach implementation", kwargs={"foreach": True}, host_state=("step",)),
    Optimizer("adamw-fused", "AdamW, fused kernel (state and step counters on the device)", kwargs={"fused": True}),
    Optimizer("adamw-forloop", "AdamW, for-loop implementation", kwargs={"foreach": False}, host_state=("step",)),
    Optimizer("sgd", "plain SGD, no momentum (no optimizer state)", torch_class="SGD"),
    # torch picks foreach for CUDA tensors and a for-loop for CPU ones; fake tensors are CPU tensors
    Optimizer("sgd-momentum", "SGD with momentum 0.9 (one momentum buffer per parameter)", torch_class="SGD",
              kwargs={"momentum": 0.9}, target_kwargs={"cuda": {"foreach": True}, "cpu": {"foreach": False}}),
    # as the HF Trainer's optim="adafactor" builds it (transformers' trainer_optimizer: _get_adafactor)
    Optimizer("adafactor", "Adafactor (transformers) as the HF Trainer runs optim=\"adafactor\": factored second "
              "moments (a row and a column per matrix), no first moment", torch_class="Adafactor",
              module="transformers.optimization", kwargs={"scale_parameter": False, "relative_step": False}),
)}
DEFAULT = "adamw"


def help_text() -> str:
    """The names as a flag's help lists them: 'adamw (as the target runs it), ..., or sgd'."""
    return one_of(f"{o.name} (as the target runs it)" if o.runs_as else o.name for o in OPTIMIZERS.values())


def check(name: str) -> str:
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    return name


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
    cls = getattr(importlib.import_module(record.module), record.torch_class)
    kwargs = {**record.kwargs, **record.target_kwargs.get(target, {})}
    return lambda params: cls(params, lr=LR, **kwargs)


def host_state(name: str, target: str) -> Callable:
    """optimizer -> the state tensors of `name` (as `target` runs it) that a GPU keeps in host memory."""
    keys = resolve(name, target).host_state

    def tensors(optimizer) -> list:
        out = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                out += [state[k] for k in keys if hasattr(state.get(k), "untyped_storage")]
        return out

    return tensors
