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
from ..spec import MethodSpec
from ..units import parse_bytes
from . import models as _models
from .config import _where, load_experiment
from .spec import AXES, EARLY_STOP_AXES, RUN_OPTIONS, Grid, RunSpec, TrainSpec, default, flag

MEMORY_AXES = ("models", "methods", "seq_lens", "batch_sizes", "image_sizes")
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

    flags: the sweep's settings by their file key (models, methods, seq_lens, batch_sizes, image_sizes, dtypes
    as lists; overrides: dict; method_options: {METHOD: {KEY: value}}; device, attn, target, gpu, optimizer,
    ...); None means "not given". An axis neither gives takes its default (spec.DEFAULTS). train=False drops
    the file's [train] runs. device_default: the function that picks the device when neither names one
    (membench.devices.default_device). Every run is checked here as far as the shipped model configs
    tell, without torch; a problem names the flag, or the file's line, that set it."""
    from ..devices import default_device

    device_default = device_default or default_device
    path = Path(config) if config is not None else None
    file = load_experiment(path) if path is not None else {}
    text = path.read_text(errors="replace") if path is not None else ""

    def pick(key, default=None):
        value = flags.get(key)
        return value if value is not None else file.get(key, default)

    def given(key) -> bool:
        return flags.get(key) is not None or key in file

    def setting(key) -> str:
        """How an error names a setting: the file's line when the file set it, else its flag."""
        return _where(path, text, key) if flags.get(key) is None and key in file else flag(key)

    overrides = {**file.get("overrides", {}), **(flags.get("overrides") or {})}
    opts = {m: dict(v) for m, v in file.get("method_options", {}).items()}
    for m, v in (flags.get("method_options") or {}).items():
        opts.setdefault(m, {}).update(v)
    device = pick("device") or device_default()

    train_specs: list[TrainSpec] = []
    if "train" in file:  # expanded (and checked) even with train=False: its methods' options are not the grid's
        from .spec import expand_train

        train_specs = expand_train(file["train"], device=device, seed=pick("seed"), method_options=opts,
                                   where=lambda k, t=None: _where(path, text, k, t))
    trained = {s.method for s in train_specs} | {MethodSpec.parse(s.method).base for s in train_specs}
    training_only = bool(train_specs) and all(pick(axis) is None for axis in MEMORY_AXES)
    if training_only:
        specs: list = []
        unused = sorted(set(opts) - trained)
        if unused:
            raise UserError(f"options given for method {unused[0]!r}, which is not trained "
                            f"({', '.join(sorted({s.method for s in train_specs}))})")
    else:
        grid_methods = set(pick("methods", []))
        grid_opts = {m: v for m, v in opts.items() if m in grid_methods or MethodSpec.parse(m).base in grid_methods
                     or m not in trained}  # options only for trained methods are not the memory grid's business
        grid = Grid(**{axis: pick(axis, default(axis)) for axis in (*AXES, "image_sizes")},
                    run=run_options(pick, device=device, overrides=overrides), method_options=grid_opts,
                    where=setting)
        check_models(grid.models, setting("models"))
        specs = grid.expand()
        check_lengths(grid, given, setting)
        problems = check_runs(specs, setting)
        if problems:
            raise UserError("; ".join(problems))
    if not train:
        train_specs = []
        if not specs:
            raise UserError("--no-train: the experiment has no memory grid (models, methods, seq_lens, "
                            "batch_sizes) either; nothing to run")
    from ..results import DEFAULT_DB

    timeout = float(pick("timeout", 1800))
    if timeout <= 0:
        raise UserError(f"{setting('timeout')}: must be positive seconds, got {timeout:g}")
    jobs = int(pick("jobs", 1))
    if jobs < 1:
        raise UserError(f"{setting('jobs')}: must be at least 1, got {jobs}")
    early_stop = early_stop_axis(pick("early_stop"))
    if early_stop is not None and early_stop not in EARLY_STOP_AXES:
        raise UserError(f"{setting('early_stop')}: unknown early-stop axis {early_stop!r}; allowed: "
                        f"{', '.join(EARLY_STOP_AXES)} or none")
    executor, ray_address = executor_of(pick, flags, setting)
    return Experiment(specs=[*specs, *train_specs], train_specs=train_specs, db=str(pick("db", DEFAULT_DB)),
                      timeout=timeout, early_stop=early_stop, name=pick("name") or (path.stem if path else None),
                      budget=budget_bytes(pick("budget"), setting("budget")), executor=executor, jobs=jobs,
                      ray_address=ray_address, start_method=pick("start_method"), config=path, file=file)


def run_options(pick, *, device: str, overrides: dict[str, Any]) -> RunSpec:
    """Every run's options (RunSpec.RUN_OPTIONS): given (flag over file), else the RunSpec's own defaults."""
    given = {k: pick(k) for k in RUN_OPTIONS if k not in ("device", "overrides", "method_options")}
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("context") is not None:
        given["context"] = str(given["context"])  # a file may give bytes as a number
    return RunSpec(device=device, overrides=overrides, **given)


def executor_of(pick, flags: dict[str, Any], setting) -> tuple[str, str | None]:
    """The executor and the Ray address. An address for another executor than ray is refused: runs meant for
    a cluster would quietly run on this machine (and measure its GPU). Only a file's address under an
    `--executor` flag is let go: the flag picks another executor for this once."""
    from .executors import EXECUTORS

    executor, address = pick("executor", "local"), pick("ray_address")
    if executor not in EXECUTORS and ":" not in executor:
        raise UserError(f"{setting('executor')}: unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)} or "
                        "package.module:Class")
    if address is None or executor == "ray":
        return executor, address
    if flags.get("executor") is not None and flags.get("ray_address") is None:
        return executor, None
    raise UserError(f"{setting('ray_address')}: a Ray address is for --executor ray, and this sweep's executor is "
                    f"{executor!r}; add --executor ray, or drop the address")


def early_stop_axis(value) -> str | None:
    """The axis an OOM stops (batch_size, seq_len) or None, from any spelling a user writes; anything
    else is passed on for run_sweep to refuse with the allowed axes."""
    for axis, spellings in EARLY_STOP.items():
        if any(value is s or (type(value) is type(s) and value == s) for s in spellings):
            return axis
    return value


def budget_bytes(value, name: str = "--budget") -> int | None:
    """--budget: '24GiB', '80GB', '8e9', 1024 -> bytes (positive), None when not given."""
    if value is None:
        return None
    n = parse_bytes(value)
    if not n:
        raise UserError(f"{name}: {value!r} is not a size; expected one such as 24GiB, 80GB or 8e9 (bytes)")
    return n


def check_models(models: list[str], name: str = "--models") -> None:
    """Named models are JSON files shipped with membench: checked here without importing torch."""
    known = _models.known()
    for m in models:
        if known and m not in known:
            raise UserError(f"{name}: unknown model {m!r}; known models: {', '.join(known)}")


def check_lengths(grid: Grid, given, setting) -> None:
    """Text models take --seq-lens, image models --image-sizes: one given for a grid with no model it
    applies to is a mistake (a vit with --seq-lens 128 would run at its own image size)."""
    text = [m for m in grid.models if not _models.reads_images(m)]
    image = [m for m in grid.models if _models.reads_images(m)]
    if given("seq_lens") and not text:
        raise UserError(f"{setting('seq_lens')}: {image[0]} is an image model: every layer sees its image's "
                        "(image_size / patch_size)^2 + 1 patches; set --image-sizes (image_sizes in an experiment "
                        "file), not --seq-lens")
    if given("image_sizes") and grid.image_sizes and not image:
        raise UserError(f"{setting('image_sizes')}: image sizes apply to image models; {text[0]} reads text "
                        "(set --seq-lens)")


def check_runs(specs: list[RunSpec], setting) -> list[str]:
    """What the shipped model configs tell against the runs, before any: sequences longer than a model's
    positions, methods its family refuses (+chunkloss without a language-model head), image sizes that
    are no multiple of the patch. One line per problem, naming the runs; the preflight checks again."""
    too_long: dict[tuple[str, int], set[int]] = {}
    refused: dict[tuple[str, str], list[str]] = {}
    off_patch: dict[tuple[str, int], set[int]] = {}
    for s in specs:
        if s.pretrained:
            continue
        limit = _models.max_positions(s.model, s.overrides)
        if s.seq_len is not None and limit is not None and s.seq_len > limit:
            too_long.setdefault((s.model, limit), set()).add(s.seq_len)
        reason = _models.method_refusal(s.method, s.model)
        if reason is not None and s.model not in refused.setdefault((s.method, reason), []):
            refused[(s.method, reason)].append(s.model)
        patch = None if s.tiny else _models.patch_size(s.model, s.overrides)  # tiny models have their own patch
        if s.image_size is not None and patch and s.image_size % patch:
            off_patch.setdefault((s.model, patch), set()).add(s.image_size)
    problems = [f"{setting('seq_lens')}: {_listed(lens)} {'is' if len(lens) == 1 else 'are'} longer than {model}'s "
                f"{limit} positions" for (model, limit), lens in too_long.items()]
    problems += [f"{setting('methods')}: {method} on {', '.join(names)}: {reason}"
                 for (method, reason), names in refused.items()]
    problems += [f"{setting('image_sizes')}: {_listed(sizes)} {'is' if len(sizes) == 1 else 'are'} not a multiple "
                 f"of {model}'s patch size {patch}" for (model, patch), sizes in off_patch.items()]
    return problems


def _listed(values) -> str:
    return ", ".join(str(v) for v in sorted(values))


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
