"""`membench train`: fine-tune a method on a real task; accuracy, loss curve, step time and memory -> the DB."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from ..assignments import parse_options
from ..errors import UserError
from ..spec import option
from ..train.setup import TrainConfig
from ..units import format_bytes
from . import app
from .format import console, progress
from .options import From, command


@dataclass
class TrainSettings:
    """`membench train`'s own options, besides the training run's (membench.train.TrainConfig)."""

    db: Path | None = option(None, "results database the run is stored in [default: membench.db]")
    no_db: bool = option(False, "do not store the run")


@command(app, "train", From(TrainConfig, "config"), From(TrainSettings, "settings", build=True))
def train(config: dict, settings: TrainSettings) -> None:
    """Fine-tune METHOD on a text-classification task (offline by default) and store accuracy and memory."""
    from .. import backbones
    from ..train import run_training
    from ..train.setup import quiet_transformers

    db, no_db = settings.db, settings.no_db
    if no_db and db is not None:  # contradictory: the run would be stored nowhere, though a database was named
        raise UserError(f"--no-db stores nothing, yet --db {db} names a database; give one of the two")
    db = db or Path("membench.db")
    if not no_db:
        from ..results.schema import check_writable

        check_writable(db)
    config = {**config, "method_options": parse_options(config["method_options"]),
              "overrides": backbones.parse_overrides(config["overrides"])}
    with progress("training") as say, quiet_transformers():
        outcome = run_training(config, progress=say)
    print_outcome(outcome)
    if not no_db:
        run_id = outcome.store(db)
        console.print(f"stored run {run_id} (kind train) in {db}; see it with `membench report --db {db}`")


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
