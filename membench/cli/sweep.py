"""`membench sweep`: a grid of runs, each in its own process, stored run by run in the results database."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from ..assignments import parse_assignments
from ..errors import UserError
from ..units import format_bytes, parse_bytes
from . import app
from .format import console, err_console
from .format import table as fmt_table


def _split(value: str | None, flag: str, cast=str) -> list | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if any(not v for v in items):
        raise UserError(f"{flag} {value!r}: empty value in the comma-separated list")
    if cast is int:
        out = []
        for v in items:
            try:
                out.append(int(v))
            except ValueError:
                raise UserError(f"{flag}: {v!r} is not an integer") from None
        return out
    return items


def _method_options(items: list[str] | None) -> dict[str, dict]:
    import json

    out: dict[str, dict] = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"bad --option {item!r}: expected METHOD.KEY=VALUE, e.g. lora.r=16")
        lhs, raw = item.split("=", 1)
        method, key = (s.strip() for s in lhs.split(".", 1))
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip()
        out.setdefault(method, {})[key] = value
    return out


def default_device() -> str:
    """cuda when an NVIDIA driver is loaded here, else fake (decided without importing torch)."""
    return "cuda" if Path("/proc/driver/nvidia/version").exists() else "fake"


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

    def advance(self, spec, status, counts) -> None:
        if self._p is not None:
            self._p.update(self._task, advance=1, counts=self._counts(counts),
                           description=f"{spec.label}: {status}")

    def finish(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


def parse_size(text: str | int | float | None) -> int | None:
    """--budget: '24GiB', '80GB', '8e9', 1024 -> bytes (positive)."""
    if text is None:
        return None
    n = parse_bytes(text)
    if not n:
        raise UserError(f"--budget {text!r}: expected a size such as 24GiB, 80GB or 8e9 (bytes)")
    return n


def _peak(row) -> int | None:
    """The run's memory peak: CUDA reserved when measured on a GPU, else predicted for one, else the
    estimated peak of the step."""
    import pandas as pd

    for col in ("cuda_max_reserved_bytes", "predicted_max_reserved_bytes", "estimated_peak_bytes"):
        v = row[col]
        if not pd.isna(v):
            return int(v)
    return None


def summary_table(db: str, keys: list[str], budget: int | None = None) -> Table | None:
    """One row per (model, method, seq, dtype): status per batch size, largest batch that ran, its peak."""
    from ..results import load

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
    table = fmt_table(title, cols, keep={"model": int(df["model"].astype(str).str.len().max()),
                                         "method": int(df["method"].astype(str).str.len().max())})
    style = {"ok": "green", "oom": "yellow", "failed": "red", "timeout": "red"}
    for (model, method, seq, dtype), g in df.groupby(["model", "method", "seq_len", "dtype"], sort=False):
        g = g.sort_values("batch_size")
        cells = " ".join(f"[{style.get(s, 'white')}]{b}:{s}[/]" for b, s in zip(g["batch_size"], g["status"],
                                                                                  strict=True))
        ok = g[g["status"] == "ok"]
        row = [model, method, str(seq), dtype, cells]
        if len(ok):
            best = ok.iloc[-1]
            row += [str(best["batch_size"]), format_bytes(_peak(best)), format_bytes(best["activation_bytes"])]
        else:
            row += ["-", "-", "-"]
        if budget:
            fits = [int(r["batch_size"]) for _, r in ok.iterrows() if (_peak(r) or 0) <= budget]
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
    table = Table(title=f"training runs ({len(df)} in {db}; `membench report` draws memory vs accuracy)")
    for col, just in (("task", "left"), ("model", "left"), ("method", "left"), ("status", "left"),
                      ("test acc.", "right"), ("majority", "right"), ("est. peak", "right"),
                      ("activations", "right"), ("step time", "right")):
        table.add_column(col, justify=just, overflow="fold")
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


@app.command()
def sweep(
    config: Path = typer.Option(None, "--config", "-c", help="experiment file (TOML); flags override it"),
    models: str = typer.Option(None, "--models", help="comma-separated named models, e.g. opt-125m,opt-1.3b"),
    methods: str = typer.Option(None, "--methods", help="comma-separated methods, e.g. full,lora,full+ckpt"),
    seq_lens: str = typer.Option(None, "--seq-lens", help="comma-separated sequence lengths"),
    batch_sizes: str = typer.Option(None, "--batch-sizes", help="comma-separated batch sizes"),
    dtypes: str = typer.Option(None, "--dtypes", help="comma-separated dtypes (default fp32)"),
    device: str = typer.Option(None, "--device", help="cpu, fake or cuda (default: cuda if a GPU is here, else fake)"),
    attn: str = typer.Option(None, "--attn", help="attention implementation: eager or sdpa (default sdpa)"),
    target: str = typer.Option(None, "--target", help="what --device fake predicts: cuda (default) or cpu"),
    gpu: str = typer.Option(None, "--gpu", help="the GPU a cuda target predicts (default a100-80gb)"),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw (default), adamw-foreach, adamw-fused, "
                                                            "adamw-forloop or sgd"),
    alloc_conf: str = typer.Option(None, "--alloc-conf", help="allocator options (PYTORCH_CUDA_ALLOC_CONF)"),
    override: list[str] = typer.Option(None, "--override", help="model config KEY=VALUE for every run (repeatable)"),
    option: list[str] = typer.Option(None, "--option", "-o", help="method option METHOD.KEY=VALUE (repeatable)"),
    tiny: bool = typer.Option(None, "--tiny/--no-tiny", help="tiny what-if models (tests, smoke runs)"),
    seed: int = typer.Option(None, "--seed"),
    db: Path = typer.Option(None, "--db", help="results database (default ./membench.db)"),
    timeout: float = typer.Option(None, "--timeout", help="seconds per run before it is killed (default 1800)"),
    early_stop: str = typer.Option(None, "--early-stop",
                                   help="after an OOM skip larger runs along batch_size or seq_len (or none)"),
    rerun: bool = typer.Option(False, "--rerun", help="run again what the database already has"),
    executor: str = typer.Option(None, "--executor", help="local (default) or ray"),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster address (default: a local instance)"),
    jobs: int = typer.Option(None, "--jobs", "-j", help="runs at once (local default 1; ray: cluster size)"),
    start_method: str = typer.Option(None, "--start-method",
                                     help="local runs: forkserver (preloaded, fast) or spawn (fresh interpreter)"),
    name: str = typer.Option(None, "--name", help="sweep name stored with each run"),
    budget: str = typer.Option(None, "--budget", help="memory budget, e.g. 24GiB: the summary shows the largest "
                                                      "batch whose peak fits"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and what is already stored, run nothing"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
    train: bool = typer.Option(True, "--train/--no-train", help="run the experiment file's [train] runs"),
) -> None:
    """Run a grid of models x methods x sequence lengths x batch sizes x dtypes, one process per run."""
    from ..results import DEFAULT_DB
    from ..sweep import Grid, make_executor, run_sweep
    from ..sweep.config import _where, load_experiment
    from ..sweep.driver import check_db, stored_status

    file = load_experiment(config) if config is not None else {}

    def pick(cli_value, key, default=None):
        return cli_value if cli_value is not None else file.get(key, default)

    file_overrides = dict(file.get("overrides", {}))
    overrides = {**file_overrides, **parse_assignments(override)}
    opts = {m: dict(v) for m, v in file.get("method_options", {}).items()}
    for m, v in _method_options(option).items():
        opts.setdefault(m, {}).update(v)
    train_specs = []
    if "train" in file:  # expanded (and checked) even with --no-train: its methods' options are not the grid's
        from ..sweep.spec import expand_train

        text = Path(config).read_text(errors="replace")
        train_specs = expand_train(file["train"], device=pick(device, "device") or default_device(),
                                   seed=pick(seed, "seed", None), method_options=opts,
                                   where=lambda k, t=None: _where(Path(config), text, k, t))
    memory_axes = (models, methods, seq_lens, batch_sizes, *(file.get(k) for k in ("models", "methods", "seq_lens",
                                                                                   "batch_sizes")))
    if train_specs and all(v is None for v in memory_axes):  # a training-only experiment
        specs = []
        if opts:
            trained = {s.method for s in train_specs} | {s.method.split("+")[0] for s in train_specs}
            unused = sorted(set(opts) - trained)
            if unused:
                raise UserError(f"options given for method {unused[0]!r}, which is not trained "
                                f"({', '.join(sorted({s.method for s in train_specs}))})")
    else:
        specs = None
    trained = {s.method for s in train_specs} | {s.method.split("+")[0] for s in train_specs}
    grid_methods = set(_split(methods, "--methods") or file.get("methods") or [])
    grid_opts = {m: v for m, v in opts.items() if m in grid_methods or m.split("+")[0] in grid_methods
                 or m not in trained}  # options only for trained methods are not the memory grid's business
    grid = None if specs is not None else Grid(models=pick(_split(models, "--models"), "models", []),
                methods=pick(_split(methods, "--methods"), "methods", []),
                seq_lens=pick(_split(seq_lens, "--seq-lens", int), "seq_lens", []),
                batch_sizes=pick(_split(batch_sizes, "--batch-sizes", int), "batch_sizes", []),
                dtypes=pick(_split(dtypes, "--dtypes"), "dtypes", ["fp32"]),
                device=pick(device, "device") or default_device(), attn=pick(attn, "attn", "sdpa"),
                overrides=overrides, method_options=grid_opts, tiny=bool(pick(tiny, "tiny", False)),
                seed=pick(seed, "seed", 0), target=pick(target, "target"), gpu=pick(gpu, "gpu"),
                optimizer=pick(optimizer, "optimizer", "adamw"), alloc_conf=pick(alloc_conf, "alloc_conf"))
    if grid is not None:
        _check_models(grid.models)
        specs = grid.expand()
    if not train:
        train_specs = []
        if not specs:
            raise UserError("--no-train: the experiment has no memory grid (models, methods, seq_lens, "
                            "batch_sizes) either; nothing to run")
    specs = [*specs, *train_specs]
    db_path = str(pick(db, "db", DEFAULT_DB))
    check_db(db_path)
    stop = pick(early_stop, "early_stop", None)
    if stop in (False, "none", "off", ""):
        stop = None
    elif stop is True or stop in ("batch", "batch-size", "batch_sizes"):
        stop = "batch_size"
    elif stop in ("seq", "seq-len", "seq_lens"):
        stop = "seq_len"
    run_timeout = float(pick(timeout, "timeout", 1800))
    if run_timeout <= 0:
        raise UserError(f"--timeout must be positive seconds, got {run_timeout:g}")
    sweep_name = pick(name, "name", None) or (Path(config).stem if config else None)
    budget_bytes = parse_size(pick(budget, "budget", None))

    if dry_run:
        stored = stored_status(db_path, [s.key() for s in specs])
        table = fmt_table(f"{len(specs)} runs ({sum(1 for s in specs if stored.get(s.key()) in ('ok', 'oom'))} "
                          f"already stored in {db_path})",
                          [(c, "left") for c in ("model", "method", "batch", "seq", "dtype", "device", "stored")],
                          keep={"model": max(len(str(s.model)) for s in specs)})
        import json

        shown = ("batch_size", "max_length", "dtype", "device", "method", "method_options")
        varying = [k for k in (train_specs[0].config if train_specs else {}) if k not in shown and len(
            {json.dumps(t.config[k], sort_keys=True, default=str) for t in train_specs}) > 1]
        for s in specs:
            method = s.method
            if getattr(s, "kind", "memory") == "train":  # "train lora (lora-r64) lr=0.002 seed=1"
                method = f"train {s.method}" + (f" ({s.label_name})" if s.label_name not in ("", s.method) else "")
                method += "".join(f" {k}={s.config[k]}" for k in varying)
            table.add_row(s.model, method, str(s.batch_size), str(s.seq_len), s.dtype, s.device,
                          stored.get(s.key(), ""))
        console.print(table)
        return

    ex = make_executor(pick(executor, "executor", "local"), jobs=int(pick(jobs, "jobs", 1)),
                       ray_address=pick(ray_address, "ray_address", None),
                       start_method=pick(start_method, "start_method", None))
    t0 = time.monotonic()
    import signal
    import threading

    def _terminate(signum, frame):  # SIGTERM stops like Ctrl-C: runs in flight are killed, stored runs stay
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    try:
        summary = run_sweep(specs, db=db_path, executor=ex, timeout=run_timeout, rerun=rerun, early_stop=stop,
                            sweep=sweep_name, progress=RichProgress(progress))
    except UserError as exc:
        if config is not None:
            raise UserError(_locate(str(exc), Path(config), file, _where)) from None
        raise
    except KeyboardInterrupt:
        err_console.print(f"interrupted: the runs in flight were stopped; every finished run is in {db_path}. "
                          "Run the same command again to resume.")
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    table = summary_table(db_path, [s.key() for s in specs], budget_bytes)
    if table is not None:
        console.print(table)
    table = train_table(db_path, [s.key() for s in train_specs])
    if table is not None:
        console.print(table)
    c = summary.counts
    console.print(f"{summary.total} runs: {summary.already_done} already stored, ran {sum(c.values())} in "
                  f"{time.monotonic() - t0:.1f} s: ok {c['ok']}, oom {c['oom']}, failed {c['failed']}, "
                  f"timeout {c['timeout']}" + (f", skipped {c['skipped']} (early stop)" if c["skipped"] else "")
                  + f"; stored in {db_path}")
    bad = [(s, r) for s, r in summary.records if r.get("status") in ("failed", "timeout")]
    for s, r in bad[:5]:
        err = (r.get("error") or "").strip().splitlines()
        err_console.print(f"[red]{r['status']}[/] {s.label}: {err[-1] if err else 'no error text'}")
    if bad:
        raise typer.Exit(1)


def _check_models(models: list[str]) -> None:
    """Named models are JSON files shipped with membench: check them without importing torch."""
    configs = Path(__file__).resolve().parent.parent / "backbones" / "configs"
    known = sorted(p.stem for p in configs.glob("*.json"))
    for m in models:
        if known and m not in known:
            raise UserError(f"unknown model {m!r}; known models: {', '.join(known)}")


def _locate(message: str, path: Path, file: dict, where) -> str:
    """Point a problem found by the preflight at the experiment file's line when it came from there."""
    import re

    text = path.read_text(errors="replace")
    m = re.search(r"has no option '([^']+)'", message)
    if m:
        for method, opts in file.get("method_options", {}).items():
            if m.group(1) in opts:
                return f"{where(path, text, m.group(1), f'options.{method}')}: {message}"
    m = re.search(r"unknown config key '([^']+)'", message)
    if m and m.group(1) in file.get("overrides", {}):
        return f"{where(path, text, m.group(1), 'overrides')}: {message}"
    return message

