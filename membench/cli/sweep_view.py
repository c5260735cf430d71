"""What `membench sweep` shows: the progress bar, the dry-run list and the summary tables (no torch)."""

from __future__ import annotations

import json

from ..units import format_bytes
from .format import Table, err_console, live_progress, progress_line
from .format import table as fmt_table


class RichProgress:
    """Progress bar with ETA and live ok / oom / failed counts (on stderr)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._p = None

    @staticmethod
    def _counts(counts) -> str:
        return (f"[green]ok {counts['ok']}[/] · [yellow]oom {counts['oom']}[/] · "
                f"[red]failed {counts['failed'] + counts['timeout']}[/]"
                + (f" · skipped {counts['skipped']}" if counts["skipped"] else ""))

    def start(self, total: int, done: int) -> None:
        from collections import Counter

        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if done:
            err_console.print(f"{done} run(s) already in the database, skipped (--rerun runs them again)")
        if not self.enabled:
            return
        self._p = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("eta"), TimeRemainingColumn(), TimeElapsedColumn(),
                           TextColumn("{task.fields[counts]}"), console=err_console, transient=False)
        self._p.start()
        self._task = self._p.add_task("sweep", total=total, counts=self._counts(Counter()))

    def note(self, text: str) -> None:
        """A line of its own above the bar (e.g. runs waited for because another sweep holds them)."""
        if self._p is not None:
            self._p.console.print(text)
        else:
            err_console.print(text)

    def advance(self, spec, status, counts) -> None:
        if self._p is not None:
            self._p.update(self._task, advance=1, counts=self._counts(counts),
                           description=f"{spec.label}: {status}")

    def finish(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


class LineProgress:
    """Progress where a bar cannot redraw (a pipe, a log file): one line per finished run, written at once."""

    def __init__(self):
        self.total = self.finished = 0

    def start(self, total: int, done: int) -> None:
        self.total = total
        if done:
            progress_line(f"{done} run(s) already in the database, skipped (--rerun runs them again)")
        progress_line(f"sweep: {total} run(s) to go")

    def note(self, text: str) -> None:
        """A line of its own (e.g. runs waited for because another sweep holds them)."""
        progress_line(text)

    def advance(self, spec, status, counts) -> None:
        self.finished += 1
        progress_line(f"[{self.finished}/{self.total}] {spec.label}: {status} (ok {counts['ok']}, oom {counts['oom']}, "
                      f"failed {counts['failed'] + counts['timeout']})")

    def finish(self) -> None:
        pass


def progress(enabled: bool):
    """The sweep's progress: a live bar on a terminal, one line per run elsewhere, or (disabled) none."""
    return LineProgress() if enabled and not live_progress() else RichProgress(enabled)


def summary_table(db: str, keys: list[str], budget: int | None = None) -> Table | None:
    """One row per (model, method, seq, dtype): status per batch size, largest batch that ran, its peak."""
    import pandas as pd

    from ..results import load
    from ..results.query import run_peak_bytes

    df = load(db)
    df = df[df["key"].isin(keys) & (df["kind"] == "memory")]
    if df.empty:
        return None
    title = f"sweep results ({len(df)} runs in {db})"
    if budget:
        title += f"; budget {format_bytes(budget)} (CUDA reserved, measured or predicted; else the estimated peak)"
    cols = [("model", "left"), ("method", "left"), ("seq", "right"), ("dtype", "left"), ("batch: status", "left"),
            ("largest ok batch", "right"), ("peak there", "right"), ("activations there", "right")]
    if budget:
        cols.append(("largest batch in budget", "right"))
    table = fmt_table(title, cols, keep=("model", "method"),
                      whole=("largest ok batch", "peak there", "activations there", "largest batch in budget"),
                      constant=("seq", "dtype"))
    style = {"ok": "green", "oom": "yellow", "failed": "red", "timeout": "red"}
    # dropna=False: an image model's run that stored no result has no sequence length, and still a row
    for (model, method, seq, dtype), g in df.groupby(["model", "method", "seq_len", "dtype"], sort=False,
                                                     dropna=False):
        g = g.sort_values("batch_size")
        cells = " ".join(f"[{style.get(s, 'white')}]{b}:{s}[/]" for b, s in zip(g["batch_size"], g["status"],
                                                                                  strict=True))
        ok = g[g["status"] == "ok"]
        row = [model, method, "-" if pd.isna(seq) else str(seq), dtype, cells]
        if len(ok):
            best = ok.iloc[-1]
            row += [str(best["batch_size"]), format_bytes(run_peak_bytes(best)), format_bytes(best["activation_bytes"])]
        else:
            row += ["-", "-", "-"]
        if budget:
            fits = [int(r["batch_size"]) for _, r in ok.iterrows() if (run_peak_bytes(r) or 0) <= budget]
            row.append(f"[green]{max(fits)}[/]" if fits else "[red]none[/]")
        table.add_row(*row)
    return table


def train_table(db: str, keys: list[str]) -> Table | None:
    """The sweep's training runs: accuracy against memory, the points of the report's Pareto plot."""
    if not keys:
        return None
    from ..report.data import add_labels
    from ..results import load

    df = load(db)
    df = df[df["key"].isin(keys)].copy()
    if df.empty:
        return None
    add_labels(df)
    numbers = ("test acc.", "majority", "est. peak", "activations", "step time")
    table = fmt_table(f"training runs ({len(df)} in {db}; `membench report` draws memory vs accuracy)",
                      [(c, "left") for c in ("task", "model", "method", "status")] + [(c, "right") for c in numbers],
                      keep=("task", "model", "method"), whole=numbers)
    style = {"ok": "green", "oom": "yellow", "failed": "red", "timeout": "red"}

    def num(row, col, fmt):
        v = row.get(col)
        try:
            return "-" if v is None or v != v else fmt(v)
        except (TypeError, ValueError):
            return "-"

    for _, r in df.sort_values(["task", "model_label", "method_label"]).iterrows():
        table.add_row(str(r["task"]), str(r["model_label"]), str(r["method_label"]),
                      f"[{style.get(r['status'], 'white')}]{r['status']}[/]",
                      num(r, "accuracy", lambda v: f"{v:.3f}"), num(r, "majority_accuracy", lambda v: f"{v:.3f}"),
                      num(r, "estimated_peak_bytes", lambda v: format_bytes(int(v))),
                      num(r, "peak_activation_bytes", lambda v: format_bytes(int(v))),
                      num(r, "step_time_s", lambda v: f"{v * 1000:.0f} ms"))
    return table


def dry_run_table(experiment, stored: dict[str, str]) -> Table:
    """Every run of the experiment and what the database already has of it."""
    specs, train_specs = experiment.specs, experiment.train_specs
    n_stored = sum(1 for s in specs if stored.get(s.key()) in ("ok", "oom"))
    table = fmt_table(f"{len(specs)} runs ({n_stored} already stored in {experiment.db})",
                      [(c, "left") for c in ("model", "method", "batch", "seq", "dtype", "device", "stored")],
                      keep=("model",))
    shown = ("batch_size", "max_length", "dtype", "device", "method", "method_options")
    varying = [k for k in (train_specs[0].config if train_specs else {}) if k not in shown and len(
        {json.dumps(t.config[k], sort_keys=True, default=str) for t in train_specs}) > 1]
    for s in specs:
        method = s.method
        if getattr(s, "kind", "memory") == "train":  # "train lora (lora-r64) lr=0.002 seed=1"
            method = f"train {s.method}" + (f" ({s.label_name})" if s.label_name not in ("", s.method) else "")
            method += "".join(f" {k}={s.config[k]}" for k in varying)
        seq = getattr(s, "seq_label", str(s.seq_len))  # an image model's image size
        table.add_row(s.model, method, str(s.batch_size), seq, s.dtype, s.device, stored.get(s.key(), ""))
    return table


def done_line(summary, seconds: float, db: str) -> str:
    c = summary.counts
    return (f"{summary.total} runs: {summary.already_done} already stored, ran {sum(c.values())} in "
            f"{seconds:.1f} s: ok {c['ok']}, oom {c['oom']}, failed {c['failed']}, timeout {c['timeout']}"
            + (f", skipped {c['skipped']} (early stop)" if c["skipped"] else "")
            + _by_others(getattr(summary, "elsewhere", []), getattr(summary, "taken_over", [])) + f"; stored in {db}")


def _by_others(elsewhere, taken_over) -> str:
    """', 3 claimed by another sweep (pid 1234) and run there; 1 taken over from a stopped sweep (pid 99)'"""
    def who(items) -> str:  # "" for a sweep that had stored the run before this one saw it held
        names = sorted({w for *_, w in items if w})
        return f" ({', '.join(names)})" if names else ""

    out = ""
    if elsewhere:
        out += f", {len(elsewhere)} claimed by another sweep{who(elsewhere)} and run there"
    if taken_over:
        out += f", {len(taken_over)} taken over from a stopped sweep{who(taken_over)}"
    return out
