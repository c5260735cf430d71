"""Command-line options generated from dataclass fields: the run description (membench.spec.RunSpec) and
each command's own settings. A field's default and description are its flag's; nothing is typed twice.

    @command(app, "run", From(RunSpec, "spec"), From(RunSettings, "settings", build=True))
    def run(spec: dict, settings: RunSettings): ...

`From(cls, param, names=None, defaults=None, build=False)`: the fields of `cls` that have `cli=True`
(or `names`), passed to the command as `param`: a dict of the values given on the command line
(None where a flag was not given and `defaults` leaves it unset), or, with `build=True`, an
instance of `cls`. A field's metadata (membench.spec.option) gives its flag, short flag and help;
`{dtypes}`, `{optimizers}`, `{precisions}`, `{default_gpu}` in a help text are filled from the lists themselves.
Dict fields (overrides, method options) are repeatable KEY=VALUE options, given as lists of text.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any

import typer

MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class From:
    cls: type
    param: str
    names: tuple[str, ...] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # CLI defaults differing from the fields' own
    build: bool = False
    arguments: tuple[str, ...] = ()  # fields taken as positional arguments, not options
    unset: bool = False  # every flag defaults to None: not given (a sweep's file or defaults decide)
    helps: dict[str, str] = field(default_factory=dict)  # help texts differing from the fields' own


def help_text(text: str) -> str:
    """A field's help with the lists it names filled in (each list typed once, where it lives)."""
    if "{" not in text:
        return text
    from .. import dtypes, optimizers, precision
    from ..gpu import specs

    return text.format(dtypes=dtypes.help_text(), optimizers=optimizers.help_text(),
                       precisions=precision.help_text(), default_gpu=specs.DEFAULT_GPU)


def _cli_type(tp):
    """The type typer parses for a field: dicts are repeatable KEY=VALUE texts; `X | None` is X."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else str
        origin = typing.get_origin(tp)
    if tp is dict or origin is dict:
        return list[str]
    if origin is list:
        return list[typing.get_args(tp)[0]] if typing.get_args(tp) else list[str]
    return tp if tp in (int, float, str, bool) else (tp if isinstance(tp, type) else str)


def _fields(source: From) -> list[dataclasses.Field]:
    fields = [f for f in dataclasses.fields(source.cls) if not f.name.startswith("_")]
    if source.names is not None:
        by_name = {f.name: f for f in fields}
        return [by_name[n] for n in source.names]
    return [f for f in fields if f.metadata.get("cli", True)]


def _default(f: dataclasses.Field, source: From):
    if source.unset:
        return None
    if f.name in source.defaults:
        return source.defaults[f.name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        value = f.default_factory()
        return None if isinstance(value, dict | list) and not value else value
    return ...  # required


def _parameter(f: dataclasses.Field, source: From, hints: dict) -> inspect.Parameter:
    meta = f.metadata
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    names = [flag] + ([meta["short"]] if meta.get("short") else []) + list(meta.get("aliases", ()))
    default = _default(f, source)
    help_ = help_text(source.helps.get(f.name, meta.get("help", "")))
    if f.name in source.arguments:
        info = typer.Argument(default, help=help_, show_default=False)
    else:
        info = typer.Option(default, *names, help=help_, show_default=meta.get("show_default", True))
    annotation = str if meta.get("comma") else _cli_type(hints[f.name])
    return inspect.Parameter(f"{source.param}__{f.name}", inspect.Parameter.KEYWORD_ONLY, default=info,
                             annotation=annotation)


def _value(f: dataclasses.Field, value):
    """A flag's value as the field holds it (a comma list split)."""
    if f.metadata.get("comma") and isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def command(app: typer.Typer, name: str | None, *sources: From, **typer_kwargs):
    """Register `fn(**{source.param: values})` as the typer command `name`, its options generated from the
    sources' fields (positional arguments first, in the sources' order)."""

    def register(fn):
        params, annotations = [], {}
        for source in sources:
            hints = typing.get_type_hints(source.cls)
            for f in _fields(source):
                p = _parameter(f, source, hints)
                params.append(p)
                annotations[p.name] = p.annotation
        params.sort(key=lambda p: not isinstance(p.default, type(typer.Argument(None))))

        @functools.wraps(fn)
        def wrapper(**given):
            kwargs = {}
            for source in sources:
                values = {f.name: _value(f, given[f"{source.param}__{f.name}"]) for f in _fields(source)}
                kwargs[source.param] = source.cls(**values) if source.build else values
            return fn(**kwargs)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = annotations
        del wrapper.__wrapped__  # typer reads the signature above, not the function's own
        app.command(name, **typer_kwargs)(wrapper)
        return fn

    return register
