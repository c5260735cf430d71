"""Run specs and grids: what one run of a sweep is, its stable key, and grid expansion (no torch)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import __version__, dtypes, precision
from ..backends import runs_real_tensors
from ..devices import DEVICES
from ..errors import UserError
from ..spec import MethodSpec, RunSpec
from . import models as _models

AXES = ("models", "methods", "seq_lens", "batch_sizes", "dtypes")
# a grid's axes when none are given: the Python API's default model, `membench fit`'s methods and
# `membench run`'s sequence length; every image model at its own image size
DEFAULTS: dict[str, tuple] = {"models": ("opt-125m",), "methods": ("full", "lora", "meft3"), "seq_lens": (512,),
                              "batch_sizes": (1, 4, 16), "dtypes": ("fp32",), "image_sizes": ()}


def default(axis: str) -> list:
    return list(DEFAULTS[axis])


def flag(key: str) -> str:
    """The command-line flag of a setting: batch_sizes -> --batch-sizes."""
    return "--" + key.replace("_", "-")


# the RunSpec fields a grid's axes set per run; every other field is the same for all its runs (`Grid.run`)
AXIS_FIELDS = ("model", "method", "batch_size", "seq_len", "dtype", "image_size")
# the run options a sweep takes once for every run, by flag or file key (a checkpoint is not a grid's)
RUN_OPTIONS = tuple(f.name for f in dataclasses.fields(RunSpec) if f.name not in (*AXIS_FIELDS, "pretrained"))


@dataclass
class Grid:
    """Every combination of the axes is one run. Text models take `seq_lens`, image models `image_sizes`
    (empty: each at its own image size). `run`: every run's other options (device, target, optimizer, ...:
    a RunSpec whose axis fields the grid sets); `method_options`: per method name. where(key) names a
    setting in error messages (default: its flag; an experiment file gives its line)."""

    models: list[str] = field(default_factory=lambda: default("models"))
    methods: list[str] = field(default_factory=lambda: default("methods"))
    seq_lens: list[int] = field(default_factory=lambda: default("seq_lens"))
    batch_sizes: list[int] = field(default_factory=lambda: default("batch_sizes"))
    dtypes: list[str] = field(default_factory=lambda: default("dtypes"))
    image_sizes: list[int] = field(default_factory=lambda: default("image_sizes"))
    run: RunSpec = field(default_factory=lambda: RunSpec(device="fake"))
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # method name -> options
    where: Callable[[str], str] | None = field(default=None, repr=False, compare=False)

    def name(self, key: str) -> str:
        """How an error names setting `key`: its flag, or where an experiment file sets it."""
        return self.where(key) if self.where is not None else flag(key)

    def validate(self) -> Grid:
        try:  # one spelling per method: "lora + ckpt" is "lora+ckpt"
            self.methods = [MethodSpec.parse(m).name for m in self.methods]
        except UserError as exc:
            raise UserError(f"{self.name('methods')}: {exc}") from None
        for axis in (*AXES, "image_sizes"):
            values = getattr(self, axis)
            if not values and axis != "image_sizes":
                raise UserError(f"{self.name(axis)}: empty grid; give at least one value")
            seen = set()
            for v in values:
                if v in seen:
                    raise UserError(f"{self.name(axis)}: duplicate value {v!r}; give each value once")
                seen.add(v)
        for axis in ("seq_lens", "batch_sizes", "image_sizes"):
            for v in getattr(self, axis):
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    raise UserError(f"{self.name(axis)}: {v!r} is not a positive integer")
        weights = precision.default_weights(self.run.precision)
        if weights is not None and self.dtypes == default("dtypes"):  # the dtype follows --precision
            self.dtypes = [weights]
        try:
            canon = [dtypes.canonical(d) for d in self.dtypes]
        except UserError as exc:
            raise UserError(f"{self.name('dtypes')}: {exc}") from None
        if len(set(canon)) != len(canon):
            raise UserError(f"{self.name('dtypes')}: duplicate dtype in {', '.join(self.dtypes)} (aliases of the "
                            "same dtype)")
        self.dtypes = [dtypes.short(d) for d in self.dtypes]
        if self.run.device is None:
            raise UserError(f"{self.name('device')}: a grid's runs need a device ({', '.join(DEVICES)})")
        try:  # every run option once (the axes' values are checked above and per run by the preflight)
            self.run.replace(model=self.models[0], method="full", dtype=self.dtypes[0]).validate()
        except UserError as exc:
            key = (exc.field or ("",))[0]
            named = key in RUN_OPTIONS and flag(key) not in str(exc)
            raise UserError(f"{self.name(key)}: {exc}" if named else str(exc), field=exc.field) from None
        for name in self.method_options:
            if name not in {MethodSpec.parse(m).base for m in self.methods} and name not in self.methods:
                raise UserError(f"options given for method {name!r}, which is not in the grid's methods "
                                f"({', '.join(self.methods)})")
        return self

    def lengths(self, model: str) -> list[tuple[int | None, int | None]]:
        """(seq_len, image_size) of a model's runs: text models along seq_lens, image models along image_sizes."""
        if _models.reads_images(model):
            return [(None, size) for size in self.image_sizes] or [(None, None)]
        return [(seq_len, None) for seq_len in self.seq_lens]

    def expand(self) -> list[RunSpec]:
        """All runs; batch size is the innermost axis (ascending), so early stop after an OOM is cheap."""
        self.validate()
        out = []
        for model, method in itertools.product(self.models, self.methods):
            opts = dict(self.method_options.get(method, self.method_options.get(MethodSpec.parse(method).base, {})))
            for (seq_len, image_size), dtype in itertools.product(self.lengths(model), self.dtypes):
                for b in sorted(self.batch_sizes):
                    out.append(self.run.replace(model=model, method=method, batch_size=b, seq_len=seq_len,
                                                dtype=dtype, image_size=image_size, method_options=opts))
        return out

    @property
    def size(self) -> int:
        per_model = sum(len(self.lengths(m)) for m in self.models)
        return per_model * len(self.methods) * len(self.batch_sizes) * len(self.dtypes)


EARLY_STOP_AXES = ("batch_size", "seq_len")


def _axis_field(spec: RunSpec | TrainSpec, axis: str) -> str:
    """The field a run varies along `axis`: a training run's seq_len is its max_length, an image model's
    its image size (a larger image is a longer sequence)."""
    if isinstance(spec, TrainSpec):
        return TrainSpec.AXIS_FIELDS.get(axis, axis)
    return "image_size" if axis == "seq_len" and spec.seq_len is None else axis


def axis_value(spec: RunSpec | TrainSpec, axis: str) -> int | None:
    """Where a run sits along `axis` (None: nowhere, e.g. an image model at its own size)."""
    return spec.to_dict().get(_axis_field(spec, axis))


def axis_group(spec: RunSpec | TrainSpec, axis: str) -> str:
    """Runs that differ only along `axis` share a group (early stop: once one OOMs, larger ones are skipped)."""
    d = spec.to_dict()
    d.pop(_axis_field(spec, axis), None)
    return json.dumps(d, sort_keys=True, default=str)


# ---- training runs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSpec:
    """One training run of a sweep (`membench.train.run_training`): the full TrainConfig, defaults filled in.

    `label` is the experiment file's name for this entry (the method name, or a variant name such
    as "lora-r64"); it is shown in the progress bar, not part of the key.
    """

    config: dict[str, Any]  # every TrainConfig field
    label_name: str = ""
    kind = "train"
    AXIS_FIELDS = {"batch_size": "batch_size", "seq_len": "max_length"}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "train", **self.config}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        return cls(config={k: v for k, v in data.items() if k != "kind"})

    def key(self, version: str = __version__) -> str:
        blob = json.dumps({"spec": self.to_dict(), "membench": version}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def store_config(self) -> dict[str, Any]:
        """What a run that produced no outcome (oom / failed / timeout) stores as its config."""
        from ..result import model_name
        from ..train.setup import DEFAULT_MODEL_NAME

        c = self.config
        model = model_name(c.get("model"), c.get("pretrained"), DEFAULT_MODEL_NAME)
        return {**c, "kind": "train", "model": model, "seq_len": c.get("max_length"),
                "device": c.get("device") or "auto"}

    # what the driver, executors and the progress bar read from any spec
    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def model(self) -> str:
        return self.store_config()["model"]

    @property
    def batch_size(self) -> int:
        return self.config["batch_size"]

    @property
    def seq_len(self) -> int:
        return self.config["max_length"]

    @property
    def dtype(self) -> str:
        return self.config["dtype"]

    @property
    def device(self) -> str:
        return self.config.get("device") or "auto"

    @property
    def label(self) -> str:
        name = self.label_name or self.method
        extra = "".join(f" {k}={self.config[k]:g}" for k in ("lr",) if self.config.get(k) is not None)
        return f"train {self.model} {name} b{self.batch_size} e{self.config['epochs']}{extra}"

    def __hash__(self) -> int:
        return hash(self.key())


TRAIN_LIST_FIELDS = ("text_columns",)  # TrainConfig fields whose value is itself a list (never a grid axis)
TRAIN_TABLE_FIELDS = ("method_options", "overrides")


def _train_defaults() -> dict[str, Any]:
    from dataclasses import fields

    from ..train.setup import TrainConfig

    out = {}
    for f in fields(TrainConfig):
        if f.name != "profile_memory":  # a sweep's training runs always measure their memory
            out[f.name] = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
    return out


def expand_train(table: dict[str, Any], *, device: str | None = None, seed: int | None = None,
                 method_options: dict[str, dict[str, Any]] | None = None, where=None) -> list[TrainSpec]:
    """Expand an experiment file's [train] table into training runs.

    table: shared TrainConfig fields, and `methods`: a list of method names, or a table of
    entries NAME -> {TrainConfig fields, `method` (default NAME), `options` (method options)}.
    A list value of a scalar field (lr = [1e-3, 5e-3], seed = [0, 1]) is a grid axis.
    device / seed / method_options: sweep-level defaults (the file's top-level values).
    where(key, table) -> "file:line: key ..." for error messages.
    """
    where = where or (lambda key, tbl=None: f"key {repr(f'{tbl}.{key}' if tbl else key)}")
    defaults = _train_defaults()
    allowed = sorted([*defaults, "methods", "options"])  # per method also: method
    shared = {k: v for k, v in table.items() if k != "methods"}
    methods = table.get("methods")
    if methods is None or (isinstance(methods, list | dict) and not methods):
        raise UserError(f"{where('methods', 'train')}: list the methods to train, e.g. methods = [\"full\", "
                        f"\"lora\"] or [train.methods.lora] tables")
    if isinstance(methods, list):
        if not all(isinstance(m, str) for m in methods):
            raise UserError(f"{where('methods', 'train')}: expected method names (strings)")
        if len(set(methods)) != len(methods):
            raise UserError(f"{where('methods', 'train')}: duplicate method; give each once")
        entries = {m: {} for m in methods}
    elif isinstance(methods, dict):
        entries = {}
        for name, body in methods.items():
            if not isinstance(body, dict):
                raise UserError(f"{where(name, 'train.methods')}: expected a table [train.methods.{name}] of "
                                f"hyper-parameters")
            entries[name] = body
    else:
        raise UserError(f"{where('methods', 'train')}: expected a list of methods or [train.methods.NAME] tables")

    specs: list[TrainSpec] = []
    for name, body in entries.items():
        tbl = f"train.methods.{name}" if body else "train"
        merged: dict[str, Any] = {}
        for src, src_tbl in ((shared, "train"), (body, tbl)):
            for k, v in src.items():
                if k not in defaults and k not in ("options",) and not (k == "method" and src is body):
                    raise UserError(f"{where(k, src_tbl)}: unknown training key; allowed: {', '.join(allowed)}")
                if k == "method" and src is shared:
                    raise UserError(f"{where(k, src_tbl)}: give the methods as `methods`, not `method`")
                merged[k] = v
        method = merged.pop("method", name)
        if not isinstance(method, str):
            raise UserError(f"{where('method', tbl)}: expected a method name")
        opts = dict((method_options or {}).get(method, (method_options or {}).get(MethodSpec.parse(method).base, {})))
        for src in (shared, body):
            for k in ("options", "method_options"):
                if k in src:
                    if not isinstance(src[k], dict):
                        raise UserError(f"{where(k, tbl if src is body else 'train')}: expected a table of "
                                        f"method option KEY = VALUE")
                    opts.update(src[k])
        merged.pop("options", None)
        merged["method_options"] = opts
        if merged.get("device") is None and runs_real_tensors(device):  # a fake sweep's training runs pick their own
            merged["device"] = device
        if "seed" not in merged and seed is not None:
            merged["seed"] = seed
        for k in TRAIN_TABLE_FIELDS:
            if k in merged and not isinstance(merged[k], dict):
                raise UserError(f"{where(k, tbl)}: expected a table of KEY = VALUE")
        axes = [k for k, v in merged.items() if isinstance(v, list) and k not in TRAIN_LIST_FIELDS]
        for k in axes:
            vals = merged[k]
            if not vals:
                raise UserError(f"{where(k, tbl)}: empty list")
            if len({json.dumps(v, sort_keys=True) for v in vals}) != len(vals):
                raise UserError(f"{where(k, tbl)}: duplicate value in {vals!r}; give each value once")
        for combo in itertools.product(*(merged[k] for k in axes)):
            cfg = {**defaults, **merged, **dict(zip(axes, combo, strict=True)), "method": method}
            from ..train.setup import TrainConfig, check_config

            try:
                check_config(TrainConfig.from_dict(cfg))
                cfg["dtype"] = dtypes.short(cfg["dtype"])
            except UserError as exc:
                at = where(name, "train.methods") if body else where("methods", "train")
                raise UserError(f"{at}: {exc}") from None
            specs.append(TrainSpec(config=cfg, label_name=name))
    keys = [s.key() for s in specs]
    if len(set(keys)) != len(keys):
        raise UserError(f"{where('methods', 'train')}: two training entries give the same run; make them differ")
    return specs
