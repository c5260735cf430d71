"""Method registry. A method registers itself with `@register` in its own module.

Names combine with modifiers: `lora+ckpt` is LoRA with gradient checkpointing.
"""

from __future__ import annotations

from ..errors import UserError
from .base import Method, MethodConfig

_REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def names(include_modifiers: bool = False) -> list[str]:
    _load()
    return [n for n, m in _REGISTRY.items() if include_modifiers or not m.is_modifier]


def modifier_names() -> list[str]:
    _load()
    return [n for n, m in _REGISTRY.items() if m.is_modifier]


def get(name: str) -> Method:
    _load()
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r}; known methods: {', '.join(names())}"
                        + (f" (modifiers: {', '.join(modifier_names())})" if modifier_names() else ""))
    return _REGISTRY[name]


def resolve(spec) -> tuple[Method, list[Method]]:
    """'lora+ckpt' (or its MethodSpec) -> (lora, [ckpt]); every part registered, a method then modifiers (in
    the canonical order MethodSpec parses them into)."""
    from ..spec import MethodSpec

    try:
        parsed = MethodSpec.parse(spec)
    except UserError as exc:
        raise UserError(f"{exc}; known methods: {', '.join(names())}") from None
    method = get(parsed.base)
    if method.is_modifier:
        raise UserError(f"{parsed.base!r} is a modifier; write it after a method, e.g. full+{parsed.base}")
    mods = []
    for p in parsed.modifiers:
        m = get(p)
        if not m.is_modifier:
            raise UserError(f"{p!r} is a method, not a modifier; modifiers: {', '.join(modifier_names()) or 'none'}")
        mods.append(m)
    return method, mods


def configs(spec: str, family, options: dict | None = None):
    """'lora+chunkloss' and its options -> (method, its config, [(modifier, its config), ...]).

    An option goes to the modifier it names (`chunkloss.chunk=256`), else to the method,
    else, when the method has no such option, to the one modifier that has it (`chunk=256`)."""
    import dataclasses

    method, mods = resolve(spec)
    own: dict = {}
    theirs: dict[str, dict] = {m.name: {} for m in mods}
    fields = {m.name: {f.name for f in dataclasses.fields(m.Config)} for m in mods}
    main_fields = {f.name for f in dataclasses.fields(method.Config)}
    for key, value in (options or {}).items():
        head, dot, rest = str(key).partition(".")
        if dot and head in theirs:
            theirs[head][rest] = value
            continue
        owners = [m for m, f in fields.items() if key in f]
        if key not in main_fields and len(owners) == 1:
            theirs[owners[0]][key] = value
        else:
            own[key] = value
    return (method, method.make_config(family, own),
            [(m, m.make_config(family, theirs[m.name])) for m in mods])


def options_dict(cfg, modifier_cfgs) -> dict:
    """A run's resolved options: the method's fields, then each modifier's as `name.field`."""
    out = cfg.to_dict()
    for mod, mcfg in modifier_cfgs:
        out.update({f"{mod.name}.{k}": v for k, v in mcfg.to_dict().items()})
    return out


_LOADED = False
_INTERFACE = ("base", "trainable")  # modules of the interface, not methods


def _load() -> None:
    """Import the method modules (each registers itself), then plugins.

    Plugins: `MEMBENCH_PLUGINS=pkg.mod,other.mod` imports extra modules that
    register methods (tests use it to register deliberately broken methods in
    sweep subprocesses).
    """
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import os
    import pkgutil

    for info in pkgutil.iter_modules(__path__):  # shared helpers are `_`-prefixed; `base`, `trainable`: the interface
        if not info.name.startswith("_") and info.name not in _INTERFACE:
            importlib.import_module(f"{__name__}.{info.name}")
    for mod in filter(None, (m.strip() for m in os.environ.get("MEMBENCH_PLUGINS", "").split(","))):
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise UserError(f"MEMBENCH_PLUGINS: cannot import {mod!r}: {exc}") from None


__all__ = ["Method", "MethodConfig", "register", "names", "get", "resolve", "configs", "options_dict",
           "modifier_names"]
