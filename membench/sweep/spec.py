"""Run specs and grids: what one run of a sweep is, its stable key, and grid expansion (no torch)."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import __version__, dtypes
from ..errors import UserError

DEVICES = ("cpu", "fake", "cuda")
AXES = ("models", "methods", "seq_lens", "batch_sizes", "dtypes")


@dataclass(frozen=True)
class RunSpec:
    """Everything that identifies one run. Its key hashes all of it plus the membench version."""

    model: str
    method: str
    batch_size: int
    seq_len: int
    dtype: str
    device: str
    attn: str = "sdpa"
    overrides: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)
    tiny: bool = False
    seed: int = 0
    pretrained: str | None = None
    target: str | None = None  # None: the device's default (fake -> cuda on the default GPU)
    gpu: str | None = None
    optimizer: str = "adamw"
    alloc_conf: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def key(self, version: str = __version__) -> str:
        """A stable hash of the full config and the package version (order of dict keys does not matter)."""
        blob = json.dumps({"spec": self.to_dict(), "membench": version}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    @property
    def label(self) -> str:
        return f"{self.model} {self.method} b{self.batch_size} s{self.seq_len} {self.dtype}"

    def __hash__(self) -> int:  # dict fields are not hashable; the key is
        return hash(self.key())


@dataclass
class Grid:
    models: list[str]
    methods: list[str]
    seq_lens: list[int]
    batch_sizes: list[int]
    dtypes: list[str]
    device: str = "fake"
    attn: str = "sdpa"
    overrides: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # method name -> options
    tiny: bool = False
    seed: int = 0
    target: str | None = None
    gpu: str | None = None
    optimizer: str = "adamw"
    alloc_conf: str | None = None

    def validate(self) -> Grid:
        for axis in AXES:
            values = getattr(self, axis)
            if not values:
                raise UserError(f"empty grid: --{axis.replace('_', '-')} has no values")
            seen = set()
            for v in values:
                if v in seen:
                    raise UserError(f"duplicate value {v!r} in --{axis.replace('_', '-')}; give each value once")
                seen.add(v)
        for axis in ("seq_lens", "batch_sizes"):
            for v in getattr(self, axis):
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    raise UserError(f"--{axis.replace('_', '-')}: {v!r} is not a positive integer")
        canon = [dtypes.canonical(d) for d in self.dtypes]
        if len(set(canon)) != len(canon):
            raise UserError(f"duplicate dtype in --dtypes {','.join(self.dtypes)} (aliases of the same dtype)")
        self.dtypes = [dtypes.short(d) for d in self.dtypes]
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; allowed: {', '.join(DEVICES)}")
        if self.attn not in ("eager", "sdpa"):
            raise UserError(f"unknown attention implementation {self.attn!r}; allowed: eager, sdpa")
        from .. import optimizers
        from ..gpu.target import resolve

        optimizers.check(self.optimizer)
        resolve(self.device, self.target, self.gpu, self.alloc_conf)  # the combination, with clear errors
        for name in self.method_options:
            if name not in {m.split("+")[0] for m in self.methods} and name not in self.methods:
                raise UserError(f"options given for method {name!r}, which is not in the grid's methods "
                                f"({', '.join(self.methods)})")
        return self

    def expand(self) -> list[RunSpec]:
        """All runs; batch size is the innermost axis (ascending), so early stop after an OOM is cheap."""
        self.validate()
        out = []
        for model, method, seq_len, dtype in itertools.product(self.models, self.methods, self.seq_lens,
                                                              self.dtypes):
            opts = dict(self.method_options.get(method, self.method_options.get(method.split("+")[0], {})))
            for b in sorted(self.batch_sizes):
                out.append(RunSpec(model=model, method=method, batch_size=b, seq_len=seq_len, dtype=dtype,
                                   device=self.device, attn=self.attn, overrides=dict(self.overrides),
                                   method_options=opts, tiny=self.tiny, seed=self.seed, target=self.target,
                                   gpu=self.gpu, optimizer=self.optimizer, alloc_conf=self.alloc_conf))
        return out

    @property
    def size(self) -> int:
        n = 1
        for axis in AXES:
            n *= len(getattr(self, axis))
        return n


EARLY_STOP_AXES = ("batch_size", "seq_len")


def axis_group(spec: RunSpec | TrainSpec, axis: str) -> str:
    """Runs that differ only along `axis` share a group (early stop: once one OOMs, larger ones are skipped)."""
    d = spec.to_dict()
    d.pop(TrainSpec.AXIS_FIELDS.get(axis, axis) if isinstance(spec, TrainSpec) else axis, None)
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
        opts = dict((method_options or {}).get(method, (method_options or {}).get(method.split("+")[0], {})))
        for src in (shared, body):
            for k in ("options", "method_options"):
                if k in src:
                    if not isinstance(src[k], dict):
                        raise UserError(f"{where(k, tbl if src is body else 'train')}: expected a table of "
                                        f"method option KEY = VALUE")
                    opts.update(src[k])
        merged.pop("options", None)
        merged["method_options"] = opts
        if merged.get("device") is None and device in ("cpu", "cuda"):
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
