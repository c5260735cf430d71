"""What `membench bench-compare` prints: one cell per memory figure and step time, and the verdicts."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape

from ..units import format_bytes


def console_for_logs() -> Console:
    # CI logs are not terminals: give the table room instead of rich's 80-column default
    if sys.stdout.isatty():
        return Console()
    return Console(width=int(os.environ.get("COLUMNS", "0") or 0) or 200)


def signed_bytes(delta: int | None) -> str:
    if delta is None:
        return ""
    if delta == 0:
        return "="
    sign = "+" if delta > 0 else "-"
    return f"{sign}{format_bytes(abs(delta))}"


def pct(p: float | None) -> str:
    if p is None:
        return ""
    if p == float("inf"):
        return "+inf%"
    return f"{p:+.2f}%"


def mem_cell(row, metric: str) -> str:
    m = row.metric(metric)
    if m is None:
        return ""
    if m.base is None or m.current is None:
        value = m.current if m.current is not None else m.base
        return format_bytes(value)
    if m.delta == 0:
        return f"{format_bytes(m.current)} ="
    style = "red" if m.regressed else ("green" if m.delta < 0 else "yellow")
    return f"{format_bytes(m.current)} [{style}]{signed_bytes(m.delta)} ({pct(m.pct)})[/{style}]"


def other_cell(row) -> str:
    from ..benchcmp import HEADLINE

    others = [m for m in row.changed if m.metric not in HEADLINE and m.delta is not None]
    if not others:
        return ""
    worst = max(others, key=lambda m: m.delta)
    best = min(others, key=lambda m: m.delta)
    pick = worst if worst.delta > 0 else best
    style = "red" if pick.regressed else ("green" if pick.delta < 0 else "yellow")
    more = f" +{len(others) - 1} more" if len(others) > 1 else ""
    return f"[{style}]{escape(pick.metric)} {signed_bytes(pick.delta)}[/{style}]{more}"


def time_cell(row, gated: bool) -> str:
    if row.time_current is None and row.time_base is None:
        return ""
    if row.time_base is None or row.time_current is None:
        t = row.time_current if row.time_current is not None else row.time_base
        return f"{t * 1e3:.2f} ms"
    change = row.time_pct
    style = "red" if row.time_regressed else ("dim" if not gated else ("green" if (change or 0) < 0 else "yellow"))
    return f"{row.time_base * 1e3:.2f} -> {row.time_current * 1e3:.2f} ms [{style}]{pct(change)}[/{style}]"


VERDICT = {"ok": "ok", "improved": "[green]improved", "regressed": "[bold red]REGRESSED", "new": "[cyan]new",
            "missing": "[bold red]MISSING"}
