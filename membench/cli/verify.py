"""`membench verify`: is a reversible MEFT model numerically trustworthy? One step both ways.

`--db PATH` stores the per-layer numbers as one run of kind "verify" (membench.verify.store_verify),
which `membench report` plots against depth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer

from .. import dtypes
from ..errors import UserError
from ..paths import output_file, write_text_atomic
from ..spec import RunSpec, option
from ..verify import VERIFY_DTYPES
from . import app
from .format import console, status
from .format import table as fmt_table
from .options import From, command


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
                  f"(threshold {_fmt(thr)}, {res.get('precision', '32-true')})")
    if res.get("recommendation"):
        console.print(f"recommendation: {res['recommendation']}")


@dataclass
class VerifySettings:
    """`membench verify`'s own options, besides the run it checks."""

    threshold: float = option(1e-3, "largest relative gradient error that passes")
    out: Path | None = option(None, "write the per-layer numbers as JSON")
    db: Path | None = option(None, "also store the per-layer numbers in this results database (kind verify; "
                                   "`membench report` plots them)")


CHECKED = ("model", "method", "dtype", "precision", "overrides", "method_options", "batch_size", "seq_len", "seed",
           "pretrained")


@command(app, "verify", From(RunSpec, "spec", names=CHECKED, defaults={"method": "meft1", "batch_size": 2, "seq_len": 32},
                             helps={"method": "meft1, meft2 or meft3",
                                    "dtype": f"{dtypes.help_text(VERIFY_DTYPES)} (weights and streams)"}),
         From(VerifySettings, "settings", build=True))
def verify(spec: dict, settings: VerifySettings) -> None:
    """Run one step reversibly and with plain autograd (same weights); print per-layer errors. Exit 1 on fail."""
    from ..verify import store_verify, verify_numbers
    from .run import spec_from_flags

    run_spec = spec_from_flags(spec)
    if not run_spec.model and not run_spec.pretrained:
        raise UserError("give --model NAME (see `membench list`) or --pretrained PATH")
    if settings.threshold <= 0:
        raise UserError(f"--threshold must be positive, got {settings.threshold}")
    if run_spec.batch_size <= 0 or run_spec.seq_len <= 0:
        raise UserError("--batch-size and --seq-len must be positive integers")
    out, db = settings.out, settings.db
    if out is not None:
        output_file(out, "--out")
    if db is not None:  # a bad database fails before the check runs, and nothing stored is touched
        from ..results.schema import check_writable

        check_writable(db)
    with status("verifying"):
        res = verify_numbers(run_spec, threshold=settings.threshold)
    print_verify(res)
    if out is not None:
        write_text_atomic(out, json.dumps(res, indent=2, default=str) + "\n")
        console.print(f"wrote {out}")
    if db is not None:
        res["pretrained"] = run_spec.pretrained
        run_id = store_verify(db, res)
        console.print(f"stored as run {run_id} (kind verify) in {db}")
    if not res["passed"]:
        raise typer.Exit(1)
