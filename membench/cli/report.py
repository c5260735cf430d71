"""`membench report`: figures (PNG) and one self-contained HTML file from a results database."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .format import console


@app.command()
def report(
    db: Path = typer.Option(Path("membench.db"), "--db", help="results database"),
    out: Path = typer.Option(None, "--out", "-o", help="report folder [default: reports/<database name>]"),
) -> None:
    """Write PNG figures and one self-contained HTML report (no network needed) from a results database."""
    from ..paths import output_folder
    from ..report import build_report

    out = output_folder(out or Path("reports") / db.stem, "--out")
    rep = build_report(db, out)
    console.print(f"{rep.runs} runs -> {len(rep.pngs)} figures in {out}/ ; open {rep.html_path}")
