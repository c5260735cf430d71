"""The result of one profiled run, and its JSON form. Imports no torch (reports load it fast)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


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
    seq_len: int
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
    predicted_cuda: dict[str, Any] | None = None  # the allocator model's figures (membench.gpu.predict)
    optimizer: str = ""  # the optimizer implementation the step ran (membench.optimizers)
    loss_kind: str = ""  # "model" (output.loss), "sum" (a pseudo-loss: the sum of the output), "loss_fn"
    schema_version: int = SCHEMA_VERSION

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
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str) -> RunResult:
        with open(path) as f:
            return cls.from_dict(json.load(f))
