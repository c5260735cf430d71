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
                                   method_options=opts, tiny=self.tiny, seed=self.seed))
        return out

    @property
    def size(self) -> int:
        n = 1
        for axis in AXES:
            n *= len(getattr(self, axis))
        return n


EARLY_STOP_AXES = ("batch_size", "seq_len")


def axis_group(spec: RunSpec, axis: str) -> str:
    """Runs that differ only along `axis` share a group (early stop: once one OOMs, larger ones are skipped)."""
    d = spec.to_dict()
    d.pop(axis)
    return json.dumps(d, sort_keys=True, default=str)
