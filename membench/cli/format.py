"""Human units and shared rich helpers (no torch)."""

from __future__ import annotations

import contextlib

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


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
