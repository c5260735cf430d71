"""`membench results`: list the runs of a results database; `membench results export` writes them out."""

from __future__ import annotations

from pathlib import Path

import typer

from ..assignments import parse_filters
from ..errors import UserError
from ..paths import make_parents, output_file
from ..units import format_bytes
from . import app
from .format import console
from .format import table as fmt_table

results_app = typer.Typer(add_completion=False, invoke_without_command=True, no_args_is_help=False,
                          help="List the runs stored by `membench sweep` and `membench run --db`.")
app.add_typer(results_app, name="results")

FORMATS = ("csv", "parquet", "json")

DB_HELP = "results database (default ./membench.db)"
FILTER_HELP = "COLUMN=VALUE, COLUMN!=VALUE or COLUMN>=N (repeatable; VALUE may be a,b,c)"


def _load(db: Path | None, filters: list[str] | None, layers: bool = False):
    from ..results import DEFAULT_DB, load, load_layers

    path = str(db or DEFAULT_DB)
    df = load(path, where=parse_filters(filters))
    if layers:
        lay = load_layers(path, run_ids=[int(i) for i in df["run_id"]])
        return path, df, lay
    return path, df, None


@results_app.callback()
def results(
    ctx: typer.Context,
    db: Path = typer.Option(None, "--db", help=DB_HELP),
    filter_: list[str] = typer.Option(None, "--filter", "-f", help=FILTER_HELP),
    last: int = typer.Option(None, "--last", help="only the N most recent runs"),
) -> None:
    """List runs in a table (newest last). `membench results export --format csv` writes them out."""
    if last is not None and last <= 0:
        raise UserError(f"--last must be a positive number of runs, got {last}")
    if ctx.invoked_subcommand is not None:  # `results --db X --filter F export`: the export reads X, F
        ctx.obj = {"db": db, "filter": filter_ or [], "last": last}
        return
    path, df, _ = _load(db, filter_)
    if last is not None:
        df = df.tail(last)
    if df.empty:
        console.print(f"no runs match in {path}")
        return
    import pandas as pd

    from ..results.query import RUN_COLUMNS

    metric_cols = [c for c in df.columns if c not in RUN_COLUMNS]
    style = {"ok": "green", "oom": "yellow", "failed": "red", "timeout": "red"}

    def txt(v) -> str:
        return "-" if v is None or pd.isna(v) else str(v)

    # (header, cell) per column; config columns that are the same on every row move to the title
    cols = [("id", lambda r: txt(r["run_id"])), ("kind", lambda r: txt(r["kind"])),
            ("status", lambda r: f"[{style.get(r['status'], 'white')}]{r['status']}[/]"),
            ("model", lambda r: txt(r["model"])), ("method", lambda r: txt(r["method"])),
            ("batch", lambda r: txt(r["batch_size"])), ("seq", lambda r: txt(r["seq_len"])),
            ("dtype", lambda r: _dtype(r, txt)), ("precision", lambda r: _precision(r, txt)),
            ("optimizer", lambda r: txt(r["optimizer"])), ("device", lambda r: txt(r["device"])),
            ("activations", lambda r: _hb(r["activation_bytes"])),
            ("peak act.", lambda r: _hb(r["peak_activation_bytes"])),
            ("est. peak", lambda r: _hb(r["estimated_peak_bytes"]))]
    cols += [(c, lambda r, c=c: txt(round(r[c], 4) if r[c] == r[c] else None)) for c in metric_cols]
    cols.append(("created (UTC)", lambda r: r["created_at"].strftime("%m-%d %H:%M")
                 if r["created_at"] == r["created_at"] else "-"))
    numbers = [h for h, _ in cols if h not in ("kind", "status", "model", "method", "dtype", "precision", "optimizer",
                                               "device")]
    # config columns that are the same on every row are said once, in the title
    table = fmt_table(f"{len(df)} run(s) in {path}",
                      [(h, "right" if h in ("id", "batch", "seq") else "left") for h, _ in cols],
                      keep=("id", "model", "method"), whole=numbers,
                      constant=("kind", "model", "method", "dtype", "precision", "optimizer", "device", "seq",
                                "batch"))
    for row in df.itertuples(index=False):
        r = row._asdict()
        table.add_row(*(cell(r) for _, cell in cols))
    console.print(table)


def _dtype(r, txt) -> str:
    """The weights' dtype, with the quantized base where a run had one ('bf16 · nf4+dq')."""
    quant = r.get("quant")
    return txt(r["dtype"]) + (f" · {quant}" if isinstance(quant, str) and quant else "")


def _precision(r, txt) -> str:
    """The training precision, with gradient accumulation (x4) where a run had it; runs stored before both were
    columns show '-'."""
    import pandas as pd  # (imported by the command already: the results are a DataFrame)

    precision = txt(r.get("precision"))
    accum = r.get("grad_accum")
    return precision + (f" x{int(accum)}" if accum is not None and not pd.isna(accum) and accum > 1 else "")


def _hb(v) -> str:
    try:
        return format_bytes(int(v))
    except (TypeError, ValueError):
        return "-"


@results_app.command("export")
def export(
    ctx: typer.Context,
    fmt: str = typer.Option("csv", "--format", help="csv, parquet or json"),
    out: Path = typer.Option(None, "--out", "-o", help="output file (default membench-runs.<format>)"),
    db: Path = typer.Option(None, "--db", help=DB_HELP),
    filter_: list[str] = typer.Option(None, "--filter", "-f", help=FILTER_HELP),
    layers: bool = typer.Option(False, "--layers", help="also write the per-layer table next to it (*-layers.*)"),
) -> None:
    """Write the runs (one row each, typed columns) to CSV, Parquet or JSON.

    `membench results --db X --filter F --last N export` exports what `membench results --db X --filter F
    --last N` lists; the export's own --filter adds to the group's."""
    group = ctx.obj or {}
    if db is not None and group.get("db") is not None and db != group["db"]:
        raise UserError(f"two databases: `results --db {group['db']}` and `export --db {db}`; give one")
    db = db if db is not None else group.get("db")
    filter_ = [*group.get("filter", []), *(filter_ or [])]
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    out = output_file(out or Path(f"membench-runs.{fmt}"), "--out")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("--format parquet needs pyarrow: pip install pyarrow") from None
    path, df, lay = _load(db, filter_, layers=layers)
    if group.get("last") is not None:
        df = df.tail(group["last"])
        if lay is not None:
            lay = lay[lay["run_id"].isin(list(df["run_id"]))].reset_index(drop=True)
    written = [_write(df, out, fmt)]
    if lay is not None:
        written.append(_write(lay, out.with_name(f"{out.stem}-layers{out.suffix}"), fmt))
    console.print(f"wrote {len(df)} run(s) from {path} to {', '.join(map(str, written))}")


def _write(df, path: Path, fmt: str) -> Path:
    """Write to a temporary sibling, then rename it into place (never half a file)."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=make_parents(path).parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        elif fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", date_format="iso", indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
