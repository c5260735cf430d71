"""The result of one profiled run, the record of a run as the results database stores it, and their JSON forms.
Imports no torch (reports load it fast)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import UserError
from .gpu.predict import PredictedCuda

# 2: seq_len is None for an input without a sequence axis (profile_module on a [b, d] batch); input_shape added
# 3: grad_accum added (micro-steps per optimizer step; 1 in older files)
# 4: precision added (Lightning's names; "" in older files: their dtype's true precision)
# 5: quant added (the quantized base: nf4, nf4+dq, fp4/b128, int8; "" for none and in older files)
SCHEMA_VERSION = 5


def check_model_source(model: str | None, pretrained: str | None) -> None:
    """The one rule for every kind of run: a named model (random weights) or a local checkpoint, not both.

    A checkpoint brings its own architecture: with both, the run would profile the checkpoint and label it
    with the named model (a BERT checkpoint shown as opt-125m)."""
    if model and pretrained:
        raise UserError(f"give --model NAME (random weights) or --pretrained PATH, not both: a checkpoint brings "
                        f"its own architecture (got --model {model} and --pretrained {pretrained})")


def model_name(model: str | None, pretrained: str | None = None, default: str | None = None) -> str:
    """The name a run's model goes by in results and reports (the one rule, for every kind of run).

    A named model is its name; a local checkpoint is its folder's name, or the parent's when the folder
    is a generic "model" / "checkpoint" / "final" (runs/sst2/final -> sst2); neither is `default`."""
    if model:
        return str(model)
    if pretrained:
        from pathlib import Path

        path = Path(pretrained).resolve()
        generic = path.name in ("model", "checkpoint", "final") and path.parent.name
        return path.parent.name if generic else path.name
    if default is None:
        raise ValueError("a run needs a named model or a checkpoint")
    return default


@dataclass
class LayerRow:
    name: str
    activation_bytes: int  # saved for backward at the end of forward
    recompute_bytes: int = 0  # saved again while recomputing in backward (checkpointing, MEFT)


@dataclass
class RunResult:
    model: str
    method: str
    batch_size: int
    seq_len: int | None  # tokens per sequence; None when the input has no sequence axis (see input_shape)
    dtype: str
    device: str
    activation_bytes: int
    peak_activation_bytes: int
    param_bytes: int
    trainable_param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    layers: list[LayerRow]
    provenance: dict[str, Any]
    recompute_bytes: int = 0
    estimated_peak_bytes: int = 0
    buffer_bytes: int = 0
    input_bytes: int = 0
    weight_copy_bytes: int = 0
    num_params: int = 0
    num_trainable_params: int = 0
    peak_phase: str = ""
    peak_by_phase: dict[str, int] = field(default_factory=dict)
    attn: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)
    modules: list[dict[str, Any]] = field(default_factory=list)
    cuda: dict[str, Any] = field(default_factory=dict)
    nvml: dict[str, Any] = field(default_factory=dict)
    loss: float | None = None
    wall_s: float = 0.0
    target: str = "cpu"  # what the figures describe: "cpu" or "cuda" (measured on --device cuda, else predicted)
    gpu: str | None = None  # the GPU of a cuda target
    predicted_cuda: PredictedCuda | None = None  # the allocator model's figures (saved as their dict)
    optimizer: str = ""  # the optimizer implementation the step ran (membench.optimizers)
    loss_kind: str = ""  # "model" (output.loss), "sum" (a pseudo-loss: the sum of the output), "loss_fn"
    input_shape: list[int] = field(default_factory=list)  # the first input tensor's shape ([b, s] token ids...)
    grad_accum: int = 1  # micro-steps of batch_size each per optimizer step (the figures cover them all)
    precision: str = ""  # the training precision (membench.precision: 32-true, bf16-mixed, ...; "" before 4)
    quant: str = ""  # the quantized base (membench.quant.Quant.label: nf4+dq, int8); "": none
    schema_version: int = SCHEMA_VERSION

    @property
    def shape_label(self) -> str:
        """'b8 s512' for a sequence input; the input's shape ('input 32x64') when it has no sequence axis."""
        accum = f" x{self.grad_accum} accumulated" if self.grad_accum > 1 else ""
        if self.seq_len is not None:
            return f"b{self.batch_size} s{self.seq_len}{accum}"
        return "input " + "x".join(map(str, self.input_shape or [self.batch_size])) + accum

    @property
    def layer_bytes(self) -> dict[str, int]:
        return {row.name: row.activation_bytes for row in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, default=str)

    def save(self, path: str) -> None:
        """Write the JSON atomically (a temporary file renamed into place)."""
        from .paths import write_text_atomic

        write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        data = dict(data)
        data["layers"] = [LayerRow(**row) for row in data.get("layers", [])]
        if isinstance(data.get("predicted_cuda"), dict):
            data["predicted_cuda"] = PredictedCuda.from_dict(data["predicted_cuda"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str) -> RunResult:
        with open(path) as f:
            return cls.from_dict(json.load(f))


@dataclass(frozen=True)
class RunRecord:
    """One run as the results database stores it (`results.store_result(db, record)`): how it ended, what it
    measured, what identifies it.

    A sweep's worker makes one per run, and executors carry it between processes as its dict (to_dict /
    from_dict, JSON); `membench run --db`, `verify` and `train` make their own."""

    status: str = "ok"  # ok | oom | failed | timeout (results.STATUSES); a sweep's summary also says "skipped"
    result: RunResult | None = None  # the profiled step; None: a run that ended without one, a verify check
    error: str | None = None  # what went wrong: the traceback's last lines
    wall_s: float | None = None  # seconds the run took; None: the result's own
    provenance: dict[str, Any] = field(default_factory=dict)  # added to the result's own (without one: all of it)
    kind: str = "memory"  # memory | train | verify (results.KINDS)
    config: dict[str, Any] | None = None  # what identifies the run; None: the result's (results.config_of)
    metrics: dict[str, Any] = field(default_factory=dict)  # scalars: accuracy, step_time_s, ...
    series: dict[str, list] = field(default_factory=dict)  # name -> [(step, value), ...]: loss curve, ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """A record from its dict, or from the shorter dict a third-party executor hands back (status, result,
        error, wall_s): what it leaves out takes the default, and a record that does not say how its run
        ended is a failed one."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        values.setdefault("status", "failed")
        if isinstance(values.get("result"), Mapping):
            values["result"] = RunResult.from_dict(values["result"])
        return cls(**values)
