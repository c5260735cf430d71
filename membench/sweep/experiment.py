"""An experiment: an experiment file (TOML) and command-line flags resolved into the runs of a sweep.

    flags (given) > file > defaults  ->  Experiment(specs, db, timeout, early stop, executor, ...)

`resolve` is pure: it reads the file, checks names and values, and returns what would run; nothing is
run or written. `run` runs an Experiment and points a problem found by the preflight at the file's line
when the setting came from there. Imports no torch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import PreflightError, UserError
from ..units import parse_bytes
from .config import _where, load_experiment
from .spec import Grid, RunSpec, TrainSpec

MEMORY_AXES = ("models", "methods", "seq_lens", "batch_sizes")
EARLY_STOP = {"batch_size": ("batch", "batch-size", "batch_size", "batch_sizes", True),
              "seq_len": ("seq", "seq-len", "seq_len", "seq_lens"),
              None: ("none", "off", "", False, None)}


@dataclasses.dataclass
class Experiment:
    """What `membench sweep` runs: memory runs, then training runs, and how."""

    specs: list[RunSpec | TrainSpec]
    train_specs: list[TrainSpec]
    db: str
    timeout: float
    early_stop: str | None
    name: str | None
    budget: int | None
    executor: str
    jobs: int
    ray_address: str | None
    start_method: str | None
    config: Path | None = None
    file: dict[str, Any] = dataclasses.field(default_factory=dict)


def resolve(config: str | Path | None = None, *, train: bool = True, device_default=None,
            **flags: Any) -> Experiment:
    """The experiment of `config` (a TOML file, or None) with `flags` overriding it.

    flags: the sweep's settings by their file key (models, methods, seq_lens, batch_sizes, dtypes as lists;
    overrides: dict; method_options: {METHOD: {KEY: value}}; device, attn, target, gpu, optimizer, ...);
    None means "not given". train=False drops the file's [train] runs. device_default: the function that
    picks the device when neither names one (membench.devices.default_device)."""
    from ..devices import default_device

    device_default = device_default or default_device
    path = Path(config) if config is not None else None
    file = load_experiment(path) if path is not None else {}

    def pick(key, default=None):
        value = flags.get(key)
        return value if value is not None else file.get(key, default)

    overrides = {**file.get("overrides", {}), **(flags.get("overrides") or {})}
    opts = {m: dict(v) for m, v in file.get("method_options", {}).items()}
    for m, v in (flags.get("method_options") or {}).items():
        opts.setdefault(m, {}).update(v)
    device = pick("device") or device_default()

    train_specs: list[TrainSpec] = []
    if "train" in file:  # expanded (and checked) even with train=False: its methods' options are not the grid's
        from .spec import expand_train

        text = path.read_text(errors="replace")
        train_specs = expand_train(file["train"], device=device, seed=pick("seed"), method_options=opts,
                                   where=lambda k, t=None: _where(path, text, k, t))
    trained = {s.method for s in train_specs} | {s.method.split("+")[0] for s in train_specs}
    training_only = bool(train_specs) and all(pick(axis) is None for axis in MEMORY_AXES)
    if training_only:
        specs: list = []
        unused = sorted(set(opts) - trained)
        if unused:
            raise UserError(f"options given for method {unused[0]!r}, which is not trained "
                            f"({', '.join(sorted({s.method for s in train_specs}))})")
    else:
        grid_methods = set(pick("methods", []))
        grid_opts = {m: v for m, v in opts.items() if m in grid_methods or m.split("+")[0] in grid_methods
                     or m not in trained}  # options only for trained methods are not the memory grid's business
        grid = Grid(models=pick("models", []), methods=pick("methods", []), seq_lens=pick("seq_lens", []),
                    batch_sizes=pick("batch_sizes", []), dtypes=pick("dtypes", ["fp32"]), device=device,
                    attn=pick("attn", "sdpa"), overrides=overrides, method_options=grid_opts,
                    tiny=bool(pick("tiny", False)), seed=pick("seed", 0), target=pick("target"), gpu=pick("gpu"),
                    optimizer=pick("optimizer", "adamw"), alloc_conf=pick("alloc_conf"))
        check_models(grid.models)
        specs = grid.expand()
    if not train:
        train_specs = []
        if not specs:
            raise UserError("--no-train: the experiment has no memory grid (models, methods, seq_lens, "
                            "batch_sizes) either; nothing to run")
    from ..results import DEFAULT_DB

    timeout = float(pick("timeout", 1800))
    if timeout <= 0:
        raise UserError(f"--timeout must be positive seconds, got {timeout:g}")
    return Experiment(specs=[*specs, *train_specs], train_specs=train_specs, db=str(pick("db", DEFAULT_DB)),
                      timeout=timeout, early_stop=early_stop_axis(pick("early_stop")),
                      name=pick("name") or (path.stem if path else None), budget=budget_bytes(pick("budget")),
                      executor=pick("executor", "local"), jobs=int(pick("jobs", 1)),
                      ray_address=pick("ray_address"), start_method=pick("start_method"), config=path, file=file)


def early_stop_axis(value) -> str | None:
    """The axis an OOM stops (batch_size, seq_len) or None, from any spelling a user writes; anything
    else is passed on for run_sweep to refuse with the allowed axes."""
    for axis, spellings in EARLY_STOP.items():
        if any(value is s or (type(value) is type(s) and value == s) for s in spellings):
            return axis
    return value


def budget_bytes(value) -> int | None:
    """--budget: '24GiB', '80GB', '8e9', 1024 -> bytes (positive), None when not given."""
    if value is None:
        return None
    n = parse_bytes(value)
    if not n:
        raise UserError(f"--budget {value!r}: expected a size such as 24GiB, 80GB or 8e9 (bytes)")
    return n


def check_models(models: list[str]) -> None:
    """Named models are JSON files shipped with membench: checked here without importing torch."""
    configs = Path(__file__).resolve().parent.parent / "backbones" / "configs"
    known = sorted(p.stem for p in configs.glob("*.json"))
    for m in models:
        if known and m not in known:
            raise UserError(f"unknown model {m!r}; known models: {', '.join(known)}")


def locate(message: str, field: tuple[str, str] | None, experiment: Experiment) -> str:
    """Prefix a problem with the experiment file's line when the wrong setting came from the file."""
    if field is None or experiment.config is None:
        return message
    kind, key = field
    text = experiment.config.read_text(errors="replace")
    if kind == "option":
        for method, opts in experiment.file.get("method_options", {}).items():
            if key in opts:
                return f"{_where(experiment.config, text, key, f'options.{method}')}: {message}"
    if kind == "override" and key in experiment.file.get("overrides", {}):
        return f"{_where(experiment.config, text, key, 'overrides')}: {message}"
    return message


def run(experiment: Experiment, *, executor=None, rerun: bool = False, progress=None):
    """Run the experiment's sweep (see run_sweep) on `executor` (default: the one the experiment names);
    returns the SweepSummary."""
    from .driver import run_sweep
    from .executors import make_executor

    ex = executor or make_executor(experiment.executor, jobs=experiment.jobs, ray_address=experiment.ray_address,
                                   start_method=experiment.start_method)
    try:
        return run_sweep(experiment.specs, db=experiment.db, executor=ex, timeout=experiment.timeout, rerun=rerun,
                         early_stop=experiment.early_stop, sweep=experiment.name, progress=progress)
    except PreflightError as exc:
        raise UserError("; ".join(locate(m, f, experiment) for m, f in exc.problems)) from None
