"""What every method trains and resolves to on every family, as a record to compare with a reference.

    python -m tests.methods.trainable_record tests/methods/trainable_8e829eb.json

writes, for every family x registered method, the names of the parameters
that train, their element count and the method's resolved options (LoRA and IA3's targets among them),
or the one-line refusal. tests/methods/test_trainable.py compares the current code with the file,
which was written by the code before methods declared what they train (commit 8e829eb). Only public
API is used here, so the same script runs on that commit and on today's code.
"""

from __future__ import annotations

import json
import sys

import torch

from membench import methods
from membench.backbones import FAMILIES
from membench.backbones.tiny import FAMILY_MODELS, tiny_overrides
from membench.errors import UserError
from membench.runner import build
from membench.spec import RunSpec

# options and configs where what trains differs from the defaults' (a frozen head, a merge layer, biases added)
VARIANTS = [("llama", "bitfit", {"attention_bias": True, "mlp_bias": True}, {}),
            ("bert", "houlsby", {}, {"train_head": False}),
            ("roberta", "bitfit", {}, {"train_head": False, "norms": False}),
            ("opt", "meft3", {}, {"frozen_bottom": 1, "output": "merge"}),
            ("bart", "meft1", {}, {"output": "merge"})]


def record(family: str, spec: str, overrides: dict | None = None, options: dict | None = None) -> dict:
    """{"trainable": sorted names, "numel": elements that train, "options": resolved} or {"refused": message}."""
    torch.manual_seed(0)
    try:
        built = build(RunSpec(model=FAMILY_MODELS[family], method=spec, device="cpu",
                              overrides={**tiny_overrides(family), **(overrides or {})},
                              method_options=options or {}), inputs=False)
    except UserError as exc:
        return {"refused": str(exc)}
    trains = [(n, p) for n, p in built.model.named_parameters() if p.requires_grad]
    return {"trainable": sorted(n for n, _ in trains), "numel": sum(p.numel() for _, p in trains),
            "options": json.loads(json.dumps(built.method_options))}


def cases() -> list[tuple[str, str, dict, dict]]:
    """(family, spec, overrides, options): every family x method with its defaults, then VARIANTS."""
    return [(family, spec, {}, {}) for family in sorted(FAMILIES) for spec in sorted(methods.names())] + VARIANTS


def key(family: str, spec: str, overrides: dict, options: dict) -> str:
    return " ".join([family, spec, *(f"{k}={v}" for k, v in sorted({**overrides, **options}.items()))])


def main(path: str) -> None:
    torch.set_num_threads(1)
    data = {key(*case): record(*case) for case in cases()}
    with open(path, "w") as fh:
        json.dump(data, fh, indent=0, sort_keys=True)
        fh.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
