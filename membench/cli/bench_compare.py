"""`membench bench-compare`: the CI gate on memory (exact) and step time (same machine only)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..paths import output_file, write_text_atomic
from ..spec import option
from . import app
from .bench_view import VERDICT, console_for_logs, mem_cell, other_cell, pct, signed_bytes, time_cell
from .options import From, command


@dataclass
class GateSettings:
    """`membench bench-compare`'s arguments and options."""

    baseline: Path = option(..., "baseline pytest-benchmark JSON (e.g. benchmarks/baselines/methods.json)")
    current: Path = option(..., "JSON of the run to check (pytest --benchmark-json FILE)")
    max_memory_regression: str = option("0%", "allowed growth of any memory figure: 0% (default: one byte fails), "
                                              "2.5%, 4KiB, or off")
    max_time_regression: str = option("10%", "allowed growth of step time, e.g. 10%, or off")
    time_stat: str = option("min", "timing statistic compared: min, median, mean, max")
    allow_missing: bool = option(False, "report benchmarks absent from CURRENT without failing")
    time_across_machines: bool = option(False, "gate step time even when the files come from different machines")
    changed_only: bool = option(False, "list only rows that changed, are new or missing")
    out: Path | None = option(None, "also write the comparison as JSON")


@command(app, "bench-compare", From(GateSettings, "gate", build=True, arguments=("baseline", "current")))
def bench_compare(gate: GateSettings) -> None:
    """Compare two pytest-benchmark JSON files by benchmark name: memory exactly, step time within a limit.

    Exit 0 when nothing regressed, 1 on a regression (or a benchmark missing from CURRENT), 2 on unreadable input.
    """
    from ..benchcmp import HEADLINE, compare, load, parse_limit

    mem_limit = parse_limit(gate.max_memory_regression, what="--max-memory-regression")
    time_limit = parse_limit(gate.max_time_regression, what="--max-time-regression", allow_bytes=False)
    if gate.out is not None:
        output_file(gate.out, "--out")
    report = compare(load(gate.baseline), load(gate.current), max_memory=mem_limit, max_time=time_limit,
                     time_stat=gate.time_stat, allow_missing=gate.allow_missing, time_across_machines=gate.time_across_machines)

    con = console_for_logs()
    con.print(f"baseline [bold]{escape(str(gate.baseline))}[/]  vs  current [bold]{escape(str(gate.current))}[/]")
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
        if gate.changed_only and row.status == "ok" and not row.changed and not row.time_regressed:
            continue
        shown += 1
        table.add_row(escape(row.name), mem_cell(row, HEADLINE[0]), mem_cell(row, HEADLINE[1]), other_cell(row),
                      time_cell(row, report.time_gated), VERDICT.get(row.status, row.status))
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
                              f"({signed_bytes(m.delta)}, {pct(m.pct)}; limit {report.max_memory})")
            if row.time_regressed:
                con.print(f"  {escape(row.key)}: step time {report.time_stat} {row.time_base * 1e3:.3f} -> "
                          f"{row.time_current * 1e3:.3f} ms ({pct(row.time_pct)}; limit {report.max_time})")
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
    if gate.out is not None:
        write_text_atomic(gate.out, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    raise typer.Exit(report.exit_code)
