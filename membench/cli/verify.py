"""`membench verify`: is a reversible MEFT model numerically trustworthy? One step both ways.

`--db PATH` stores the per-layer numbers as one run of kind "verify" (series per layer
index: recon_error, grad_error, start_gap), which `membench report` plots against depth.
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


SERIES = (("recon_error", "recon_error"), ("grad_error", "grad_error"), ("start_gap", "start_gap"))


def verify_record(res: dict) -> tuple[dict, dict, dict]:
    """(config, metrics, series) of a `verify_numbers` result, as the results database stores them.

    Series are indexed by layer (depth, 0 = bottom); with several stacks (encoder-decoder models)
    each series name is prefixed by its stack ("decoder.grad_error")."""
    stacks = list(dict.fromkeys(row["stack"] for row in res["layers"]))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in res["layers"]:
        for field, name in SERIES:
            value = row.get(field)
            if value is None:
                continue
            full = name if len(stacks) == 1 else f"{row['stack']}.{name}"
            series.setdefault(full, []).append((int(row["layer"]), float(value)))

    def worst(field):
        vals = [row[field] for row in res["layers"] if row.get(field) is not None]
        return max(vals) if vals else None

    metrics = {"max_grad_error": res["max_grad_error"], "max_recon_error": worst("recon_error"),
               "max_start_gap": worst("start_gap"), "output_gap": res.get("output_gap"),
               "head_grad_error": res.get("head_grad_error"),
               "input_grad_error": max(res["input_grad_error"].values()) if res.get("input_grad_error") else None,
               "passed": float(res["passed"]), "threshold": res["threshold"],
               "loss_reversible": res["loss_reversible"], "loss_plain": res["loss_plain"],
               "rng_state_equal": float(res["rng_state_equal"]),
               "reversible_layers": float(sum(1 for row in res["layers"] if row["reversible"]))}
    metrics = {k: v for k, v in metrics.items() if v is not None}
    model = str(res["model"])
    if res.get("pretrained"):
        model = Path(model).name or model
    config = {"kind": "verify", "model": model, "method": res["method"], "batch_size": res["batch_size"],
              "seq_len": res["seq_len"], "dtype": res["dtype"], "device": "cpu",
              "overrides": dict(res.get("overrides") or {}), "method_options": dict(res.get("options") or {}),
              "seed": res["seed"], "threshold": res["threshold"], "pretrained": res.get("pretrained")}
    return config, metrics, series


def store_verify(db: str | Path, res: dict) -> int:
    """Store one `verify_numbers` result as a run of kind "verify"; the same check stored again replaces it."""
    import hashlib

    from .. import __version__
    from ..results import store_result
    from ..sweep.worker import base_provenance

    config, metrics, series = verify_record(res)
    blob = json.dumps({"verify": config, "membench": __version__}, sort_keys=True, default=str)
    key = "verify-" + hashlib.sha256(blob.encode()).hexdigest()[:32]
    return store_result(str(db), None, kind="verify", status="ok", metrics=metrics, series=series, config=config,
                        key=key, provenance=base_provenance("cpu"))


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
    from ..methods.meft.verify import verify_numbers
    from .run import parse_options

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
