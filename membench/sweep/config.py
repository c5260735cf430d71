"""Experiment files (TOML): a sweep a user commits next to their code. CLI flags override the file.

    # experiments.toml
    name = "fits-24gb"
    models = ["opt-125m", "opt-1.3b"]
    methods = ["full", "lora", "meft1", "meft3"]
    seq_lens = [128, 256, 512, 1024]
    batch_sizes = [1, 4, 16]
    dtypes = ["bf16"]
    device = "fake"          # predict without a GPU (target cuda on `gpu`), or "cuda" to measure
    gpu = "rtx4090-24gb"
    timeout = 900
    early_stop = "batch_size"

    [overrides]          # model config overrides for every run
    attention_dropout = 0.0

    [options.lora]       # method options, per method
    r = 16

    [train]              # training runs (membench train), for memory-vs-accuracy points
    methods = ["full", "lora"]      # or [train.methods.NAME] tables with per-method hyper-parameters
    epochs = 2
    limit = 2000
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from ..errors import UserError

LIST_KEYS = {"models": str, "methods": str, "seq_lens": int, "batch_sizes": int, "dtypes": str, "image_sizes": int}
SWEEP_KEYS = {"name": str, "db": str, "timeout": (int, float), "early_stop": (str, bool), "executor": str,
              "ray_address": str, "jobs": int, "start_method": str, "budget": (str, int, float)}


def _run_option_types() -> dict[str, type | tuple]:
    """The scalar run options a file may set, with the types TOML gives them: from the RunSpec's fields
    (`file_types` in a field's metadata where a file may spell it otherwise, e.g. a size as bytes)."""
    import dataclasses
    import types
    import typing

    from ..spec import RunSpec
    from .spec import RUN_OPTIONS

    hints = typing.get_type_hints(RunSpec)
    out = {}
    for f in dataclasses.fields(RunSpec):
        hint = hints[f.name]
        if isinstance(hint, types.UnionType):  # X | None: X
            hint = next(t for t in typing.get_args(hint) if t is not type(None))
        if f.name in RUN_OPTIONS and hint in (str, int, bool, float):
            out[f.name] = f.metadata.get("file_types", hint)
    return out


SCALAR_KEYS = {**SWEEP_KEYS, **_run_option_types()}
TABLE_KEYS = ("overrides", "options", "train")
ALLOWED = sorted([*LIST_KEYS, *SCALAR_KEYS, *TABLE_KEYS])


def _line_of(text: str, key: str, table: str | None = None) -> int | None:
    """1-based line where `key` is set (inside [table] if given), or None."""
    lines = text.splitlines()
    current: str | None = None
    pat = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*=""")
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
    for i, line in enumerate(lines, 1):
        h = header.match(line)
        if h:
            current = h.group(1).strip()
            if (table is None and current == key) or (table is not None and current == f"{table}.{key}"):
                return i
            continue
        if pat.match(line) and (current == table or (table is None and current is None)):
            return i
    return None


def _where(path: Path, text: str, key: str, table: str | None = None) -> str:
    line = _line_of(text, key, table)
    full = f"{table}.{key}" if table else key
    return f"{path}:{line}: key {full!r}" if line else f"{path}: key {full!r}"


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[t]


def _is(value, t) -> bool:
    types = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def load_experiment(path: str | Path) -> dict[str, Any]:
    """Read and check an experiment file; returns plain values keyed like the CLI flags."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--config {p}: is a folder; give an experiment file (TOML), e.g. {p / 'experiments.toml'}")
    if not p.exists():
        raise UserError(f"--config {p}: experiment file does not exist")
    if not p.is_file():
        raise UserError(f"--config {p}: is not a regular file; give an experiment file (TOML)")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"--config {p}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{p}: not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in LIST_KEYS:
            t = LIST_KEYS[key]
            values = value if isinstance(value, list) else [value]
            bad = [v for v in values if not _is(v, t)]
            if bad:
                raise UserError(f"{_where(p, text, key)}: expected a list of {_type_name(t).split(' ', 1)[1]}s, "
                                f"got {bad[0]!r}")
            out[key] = values
        elif key in SCALAR_KEYS:
            if not _is(value, SCALAR_KEYS[key]):
                raise UserError(f"{_where(p, text, key)}: expected {_type_name(SCALAR_KEYS[key])}, got {value!r}")
            out[key] = value
        elif key == "overrides":
            if not isinstance(value, dict):
                raise UserError(f"{_where(p, text, key)}: expected a table [overrides] of config KEY = VALUE")
            out[key] = dict(value)
        elif key == "options":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise UserError(f"{_where(p, text, key)}: expected tables [options.METHOD] of option KEY = VALUE")
            out["method_options"] = {m: dict(v) for m, v in value.items()}
        elif key == "train":
            if not isinstance(value, dict):
                raise UserError(f"{_where(p, text, key)}: expected a table [train] of training runs "
                                f"(methods = [...], hyper-parameters)")
            out["train"] = dict(value)
        else:
            raise UserError(f"{_where(p, text, key)}: unknown key; allowed: {', '.join(ALLOWED)}")
    out["_path"] = str(p)
    return out
