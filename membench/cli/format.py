"""Shared rich helpers for the CLI (no torch); byte units are membench.units."""

from __future__ import annotations

import contextlib

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def table(title: str | None = None, columns=(), *, keep: dict[str, int] | None = None, **kwargs):
    """A rich Table whose cells and headers fold at any width (80 columns, a pipe), never cut or drop.

    `columns`: (header, justify) pairs. `keep`: header -> width of columns whose values identify a
    row (model, method): they never wrap, so two values never look alike."""
    from rich.table import Table

    t = Table(title=title, **kwargs)
    keep = keep or {}
    for header, justify in columns:
        if header in keep:
            t.add_column(header, justify=justify, no_wrap=True, min_width=max(keep[header], len(header)))
        else:
            t.add_column(header, justify=justify, overflow="fold")
    return t


@contextlib.contextmanager
def status(message: str):
    """A spinner on stderr while work runs; yields a function that updates its text."""
    with err_console.status(message) as st:
        yield lambda msg: st.update(f"{message}: {msg}")
