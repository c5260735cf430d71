"""`membench sweep`: a grid of runs, each in its own process, stored run by run in the results database."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..assignments import parse_assignments, parse_method_options, split_list
from . import app
from .format import console, err_console
from .sweep_view import RichProgress, done_line, dry_run_table, summary_table, train_table


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
    from ..sweep import experiment as xp
    from ..sweep.driver import check_db, stored_status

    exp = xp.resolve(config, train=train, models=split_list(models, "--models"),
                     methods=split_list(methods, "--methods"), seq_lens=split_list(seq_lens, "--seq-lens", int),
                     batch_sizes=split_list(batch_sizes, "--batch-sizes", int), dtypes=split_list(dtypes, "--dtypes"),
                     device=device, attn=attn, target=target, gpu=gpu, optimizer=optimizer, alloc_conf=alloc_conf,
                     overrides=parse_assignments(override), method_options=parse_method_options(option), tiny=tiny,
                     seed=seed, db=None if db is None else str(db), timeout=timeout, early_stop=early_stop,
                     executor=executor, ray_address=ray_address, jobs=jobs, start_method=start_method, name=name,
                     budget=budget)
    check_db(exp.db)
    if dry_run:
        console.print(dry_run_table(exp, stored_status(exp.db, [s.key() for s in exp.specs])))
        return
    t0 = time.monotonic()
    with _sigterm_as_interrupt():
        try:
            summary = xp.run(exp, rerun=rerun, progress=RichProgress(progress))
        except KeyboardInterrupt:
            err_console.print(f"interrupted: the runs in flight were stopped; every finished run is in {exp.db}. "
                              "Run the same command again to resume.")
            raise
    for table in (summary_table(exp.db, [s.key() for s in exp.specs], exp.budget),
                  train_table(exp.db, [s.key() for s in exp.train_specs])):
        if table is not None:
            console.print(table)
    console.print(done_line(summary, time.monotonic() - t0, exp.db))
    bad = [(s, r) for s, r in summary.records if r.get("status") in ("failed", "timeout")]
    for s, r in bad[:5]:
        err = (r.get("error") or "").strip().splitlines()
        err_console.print(f"[red]{r['status']}[/] {s.label}: {err[-1] if err else 'no error text'}")
    if bad:
        raise typer.Exit(1)


class _sigterm_as_interrupt:  # noqa: N801 - used as a context manager
    """SIGTERM stops like Ctrl-C: runs in flight are killed, stored runs stay (main thread only)."""

    def __enter__(self):
        import signal
        import threading

        def _terminate(signum, frame):
            raise KeyboardInterrupt

        main = threading.current_thread() is threading.main_thread()
        self.old = signal.signal(signal.SIGTERM, _terminate) if main else None

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
