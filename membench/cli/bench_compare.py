"""`membench bench-compare`: the CI gate on memory (exact) and step time (same machine only)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..paths import output_file, write_text_atomic
from ..units import format_bytes
from . import app


def _console() -> Console:
    # CI logs are not terminals: give the table room instead of rich's 80-column default
    if sys.stdout.isatty():
        return Console()
    return Console(width=int(os.environ.get("COLUMNS", "0") or 0) or 200)


def _signed_bytes(delta: int | None) -> str:
    if delta is None:
        return ""
    if delta == 0:
        return "="
    sign = "+" if delta > 0 else "-"
    return f"{sign}{format_bytes(abs(delta))}"


def _pct(p: float | None) -> str:
    if p is None:
        return ""
    if p == float("inf"):
        return "+inf%"
    return f"{p:+.2f}%"


def _mem_cell(row, metric: str) -> str:
    m = row.metric(metric)
    if m is None:
        return ""
    if m.base is None or m.current is None:
        value = m.current if m.current is not None else m.base
        return format_bytes(value)
    if m.delta == 0:
        return f"{format_bytes(m.current)} ="
    style = "red" if m.regressed else ("green" if m.delta < 0 else "yellow")
    return f"{format_bytes(m.current)} [{style}]{_signed_bytes(m.delta)} ({_pct(m.pct)})[/{style}]"


def _other_cell(row) -> str:
    from ..benchcmp import HEADLINE

    others = [m for m in row.changed if m.metric not in HEADLINE and m.delta is not None]
    if not others:
        return ""
    worst = max(others, key=lambda m: m.delta)
    best = min(others, key=lambda m: m.delta)
    pick = worst if worst.delta > 0 else best
    style = "red" if pick.regressed else ("green" if pick.delta < 0 else "yellow")
    more = f" +{len(others) - 1} more" if len(others) > 1 else ""
    return f"[{style}]{escape(pick.metric)} {_signed_bytes(pick.delta)}[/{style}]{more}"


def _time_cell(row, gated: bool) -> str:
    if row.time_current is None and row.time_base is None:
        return ""
    if row.time_base is None or row.time_current is None:
        t = row.time_current if row.time_current is not None else row.time_base
        return f"{t * 1e3:.2f} ms"
    pct = row.time_pct
    style = "red" if row.time_regressed else ("dim" if not gated else ("green" if (pct or 0) < 0 else "yellow"))
    return f"{row.time_base * 1e3:.2f} -> {row.time_current * 1e3:.2f} ms [{style}]{_pct(pct)}[/{style}]"


_VERDICT = {"ok": "ok", "improved": "[green]improved", "regressed": "[bold red]REGRESSED", "new": "[cyan]new",
            "missing": "[bold red]MISSING"}


@app.command("bench-compare")
def bench_compare(
    baseline: Path = typer.Argument(..., help="baseline pytest-benchmark JSON (e.g. benchmarks/baselines/methods.json)"),
    current: Path = typer.Argument(..., help="JSON of the run to check (pytest --benchmark-json FILE)"),
    max_memory_regression: str = typer.Option(
        "0%", "--max-memory-regression",
        help="allowed growth of any memory figure: 0% (default: one byte fails), 2.5%, 4KiB, or off"),
    max_time_regression: str = typer.Option(
        "10%", "--max-time-regression", help="allowed growth of step time, e.g. 10%, or off"),
    time_stat: str = typer.Option("min", "--time-stat", help="timing statistic compared: min, median, mean, max"),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="report benchmarks absent from CURRENT without failing"),
    time_across_machines: bool = typer.Option(
        False, "--time-across-machines", help="gate step time even when the files come from different machines"),
    changed_only: bool = typer.Option(False, "--changed-only", help="list only rows that changed, are new or missing"),
    out: Path = typer.Option(None, "--out", help="also write the comparison as JSON"),
) -> None:
    """Compare two pytest-benchmark JSON files by benchmark name: memory exactly, step time within a limit.

    Exit 0 when nothing regressed, 1 on a regression (or a benchmark missing from CURRENT), 2 on unreadable input.
    """
    from ..benchcmp import HEADLINE, compare, load, parse_limit

    mem_limit = parse_limit(max_memory_regression, what="--max-memory-regression")
    time_limit = parse_limit(max_time_regression, what="--max-time-regression", allow_bytes=False)
    if out is not None:
        output_file(out, "--out")
    report = compare(load(baseline), load(current), max_memory=mem_limit, max_time=time_limit,
                     time_stat=time_stat, allow_missing=allow_missing, time_across_machines=time_across_machines)

    con = _console()
    con.print(f"baseline [bold]{escape(str(baseline))}[/]  vs  current [bold]{escape(str(current))}[/]")
    con.print(f"limits: memory {report.max_memory} (every *_bytes figure and every layer), step time "
              f"{report.max_time} on {report.time_stat}" + ("" if report.time_gated else " [dim](time not gated)[/]"))
    if report.version_diffs:
        diffs = ", ".join(f"{k} {a or '?'} (baseline) vs {b or '?'} (current)"
                          for k, (a, b) in report.version_diffs.items())
        con.print(f"[bold yellow]VERSIONS DIFFER: {escape(diffs)}. Memory figures are exact only for the same "
                  "versions: a change below may come from the upgrade, not from the code. If so, refresh the "
                  "baseline on purpose (docs/benchmarks.md).[/]")
    for note in report.notes:
        con.print(f"[yellow]note:[/] {escape(note)}")

    table = Table(title=f"memory and step time, {len(report.rows)} benchmarks", title_justify="left")
    table.add_column("benchmark", overflow="fold")
    table.add_column("activation", justify="right")
    table.add_column("peak activation", justify="right")
    table.add_column("other figures (largest change)")
    table.add_column(f"step time ({report.time_stat})", justify="right")
    table.add_column("verdict")
    shown = 0
    for row in report.rows:
        if changed_only and row.status == "ok" and not row.changed and not row.time_regressed:
            continue
        shown += 1
        table.add_row(escape(row.name), _mem_cell(row, HEADLINE[0]), _mem_cell(row, HEADLINE[1]), _other_cell(row),
                      _time_cell(row, report.time_gated), _VERDICT.get(row.status, row.status))
    if shown:
        con.print(table)

    regressed = report.by_status("regressed")
    if regressed:
        con.print("[bold red]regressions:[/]")
        for row in regressed:
            for m in row.memory_regressions:
                if m.current is None:
                    con.print(f"  {escape(row.key)}: {escape(m.metric)} {m.base:,} B in the baseline, absent now")
                else:
                    con.print(f"  {escape(row.key)}: {escape(m.metric)} {m.base:,} -> {m.current:,} B "
                              f"({_signed_bytes(m.delta)}, {_pct(m.pct)}; limit {report.max_memory})")
            if row.time_regressed:
                con.print(f"  {escape(row.key)}: step time {report.time_stat} {row.time_base * 1e3:.3f} -> "
                          f"{row.time_current * 1e3:.3f} ms ({_pct(row.time_pct)}; limit {report.max_time})")
    missing = report.by_status("missing")
    if missing:
        how = "reported only (--allow-missing)" if report.allow_missing else "fails the gate"
        con.print(f"[bold red]missing from current[/] ({how}):")
        for row in missing:
            con.print(f"  {escape(row.key)}")
    new = report.by_status("new")
    if new:
        con.print(f"[cyan]new, not in the baseline[/] (not gated until the baseline is refreshed): {len(new)}")
        for row in new:
            con.print(f"  {escape(row.key)}")
    con.print(f"[bold]{report.summary()}[/]")
    if out is not None:
        write_text_atomic(out, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    raise typer.Exit(report.exit_code)
