"""`membench verify`: is a reversible MEFT model numerically trustworthy? One step both ways.

`--db PATH` stores the per-layer numbers as one run of kind "verify" (membench.verify.store_verify),
which `membench report` plots against depth.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import UserError
from ..paths import output_file, write_text_atomic
from . import app
from .format import console, status
from .format import table as fmt_table


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def print_verify(res: dict) -> None:
    opts = res["options"]
    table = fmt_table(f"{res['model']} · {res['method']} · {res['dtype']} · lam={opts['lam']} beta={opts['beta']}"
                      + (f" · checkpoint_every={opts['checkpoint_every']}" if opts.get("checkpoint_every") else "")
                      + (f" · recon_dtype={opts['recon_dtype']}" if opts.get("recon_dtype") else ""),
                      [("layer", "left"), ("reversible", "left"), ("input reconstruction error", "right"),
                       ("relative grad error", "right"), ("", "center"), ("starting-point gap", "right")],
                      keep={"layer": max([len(r["name"]) for r in res["layers"]] + [len("head / merge grads")]
                                         + [len(f"{name} input grad") for name in res["input_grad_error"]])})
    thr = res["threshold"]
    for row in res["layers"]:
        ok = row["grad_error"] <= thr
        table.add_row(row["name"], "yes" if row["reversible"] else "no", _fmt(row["recon_error"]),
                      _fmt(row["grad_error"]), "[green]ok" if ok else "[red]FAIL", _fmt(row["start_gap"]))
    table.add_section()
    for name, err in res["input_grad_error"].items():
        table.add_row(f"{name} input grad", "", "", _fmt(err), "[green]ok" if err <= thr else "[red]FAIL", "")
    if res["head_grad_error"] is not None:
        err = res["head_grad_error"]
        table.add_row("head / merge grads", "", "", _fmt(err), "[green]ok" if err <= thr else "[red]FAIL", "")
    console.print(table)
    gaps = ", ".join(f"{k} {_fmt(v)}" for k, v in res["stack_output_gap"].items())
    console.print(f"starting point vs the unmodified model: stack output {gaps}; final output "
                  f"{_fmt(res['output_gap'])} (relative, eval mode, at initialisation)")
    if res["options"].get("output") in ("mean", "auto") and any(v > 0.05 for v in res["stack_output_gap"].values()):
        console.print("note: the stack output does not preserve the pre-trained output at initialisation "
                      "(e.g. 'mean' averages two streams that carry different layers)")
    console.print(f"loss reversible {res['loss_reversible']:.8g} · plain {res['loss_plain']:.8g} · "
                  f"global RNG state equal after the step: {res['rng_state_equal']}")
    verdict = "[green]PASS" if res["passed"] else "[red]FAIL"
    console.print(f"{verdict}[/]: max relative gradient error {_fmt(res['max_grad_error'])} "
                  f"(threshold {_fmt(thr)})")


@app.command()
def verify(
    model: str = typer.Option(None, "--model", "-m", help="named model (see `membench list`)"),
    method: str = typer.Option("meft1", "--method", help="meft1, meft2 or meft3"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, fp64 or bf16 (weights and streams)"),
    override: list[str] = typer.Option(None, "--override", help="config KEY=VALUE (repeatable)"),
    option: list[str] = typer.Option(None, "--option", "-o", help="method option KEY=VALUE (repeatable)"),
    threshold: float = typer.Option(1e-3, "--threshold", help="largest relative gradient error that passes"),
    batch_size: int = typer.Option(2, "--batch-size", "-b"),
    seq_len: int = typer.Option(32, "--seq-len", "-s"),
    seed: int = typer.Option(0, "--seed"),
    pretrained: str = typer.Option(None, "--pretrained", help="local checkpoint folder (offline)"),
    out: Path = typer.Option(None, "--out", help="write the per-layer numbers as JSON"),
    db: Path = typer.Option(None, "--db", help="also store the per-layer numbers in this results database "
                                               "(kind verify; `membench report` plots them)"),
) -> None:
    """Run one step reversibly and with plain autograd (same weights); print per-layer errors. Exit 1 on fail."""
    from .. import backbones
    from ..assignments import parse_options
    from ..verify import store_verify, verify_numbers

    if not model and not pretrained:
        raise UserError("give --model NAME (see `membench list`) or --pretrained PATH")
    if threshold <= 0:
        raise UserError(f"--threshold must be positive, got {threshold}")
    if batch_size <= 0 or seq_len <= 0:
        raise UserError("--batch-size and --seq-len must be positive integers")
    if out is not None:
        output_file(out, "--out")
    if db is not None:  # a bad database fails before the check runs, and nothing stored is touched
        from ..results.schema import check_writable

        check_writable(db)
    with status("verifying"):
        res = verify_numbers(model, method, dtype=dtype, overrides=backbones.parse_overrides(override),
                             options=parse_options(option), batch_size=batch_size, seq_len=seq_len, seed=seed,
                             threshold=threshold, pretrained=pretrained)
    print_verify(res)
    if out is not None:
        write_text_atomic(out, json.dumps(res, indent=2, default=str) + "\n")
        console.print(f"wrote {out}")
    if db is not None:
        res["pretrained"] = pretrained
        run_id = store_verify(db, res)
        console.print(f"stored as run {run_id} (kind verify) in {db}")
    if not res["passed"]:
        raise typer.Exit(1)
