"""`membench sweep`: a grid of runs, each in its own process, stored run by run in the results database."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import typer

from ..assignments import parse_assignments, parse_method_options, split_list
from ..spec import RunSpec, option
from ..sweep.spec import DEFAULTS, RUN_OPTIONS
from . import app, sweep_view
from .format import console, err_console
from .options import From, command
from .sweep_view import done_line, dry_run_table, summary_table, train_table


def _default(axis: str) -> str:
    return ",".join(str(v) for v in DEFAULTS[axis])


@dataclass
class SweepSettings:
    """`membench sweep`'s own options: the grid's axes and how the sweep runs (unset: the file's, else defaults)."""

    config: Path | None = option(None, "experiment file (TOML); flags override it", short="-c")
    models: str | None = option(None, f"comma-separated named models, e.g. opt-125m,opt-1.3b (default {_default('models')})")
    methods: str | None = option(None, f"comma-separated methods, e.g. full,lora,full+ckpt (default {_default('methods')})")
    seq_lens: str | None = option(None, f"comma-separated sequence lengths of text models (default {_default('seq_lens')})")
    image_sizes: str | None = option(None, "comma-separated image sizes (pixels per side) of image models (default: "
                                           "each model's own)")
    batch_sizes: str | None = option(None, f"comma-separated batch sizes (default {_default('batch_sizes')})")
    dtypes: str | None = option(None, f"comma-separated dtypes (default {_default('dtypes')})")
    db: Path | None = option(None, "results database (default ./membench.db)")
    timeout: float | None = option(None, "seconds per run before it is killed (default 1800)")
    early_stop: str | None = option(None, "after an OOM skip larger runs along batch_size or seq_len (or none)")
    rerun: bool = option(False, "run again what the database already has")
    executor: str | None = option(None, "local (default) or ray")
    ray_address: str | None = option(None, "Ray cluster address (default: a local instance)")
    jobs: int | None = option(None, "runs at once (local default 1; ray: cluster size)", short="-j")
    start_method: str | None = option(None, "local runs: forkserver (preloaded, fast) or spawn (fresh interpreter)")
    name: str | None = option(None, "sweep name stored with each run")
    budget: str | None = option(None, "memory budget, e.g. 24GiB: the summary shows the largest batch whose peak fits")
    dry_run: bool = option(False, "list the runs and what is already stored, run nothing")
    progress: bool = option(True, "show the progress bar", flag="--progress/--no-progress")
    train: bool = option(True, "run the experiment file's [train] runs", flag="--train/--no-train")




@command(app, "sweep", From(SweepSettings, "settings", build=True),
         From(RunSpec, "spec", names=RUN_OPTIONS, unset=True,
              helps={"overrides": "model config KEY=VALUE for every run (repeatable)",
                     "method_options": "method option METHOD.KEY=VALUE (repeatable)"}))
def sweep(settings: SweepSettings, spec: dict) -> None:
    """Run a grid of models x methods x sequence lengths (image sizes) x batch sizes x dtypes, one process per run."""
    from ..sweep import experiment as xp
    from ..sweep.driver import check_db, stored_status

    st = settings
    exp = xp.resolve(st.config, train=st.train, models=split_list(st.models, "--models"),
                     methods=split_list(st.methods, "--methods"), seq_lens=split_list(st.seq_lens, "--seq-lens", int),
                     image_sizes=split_list(st.image_sizes, "--image-sizes", int),
                     batch_sizes=split_list(st.batch_sizes, "--batch-sizes", int),
                     dtypes=split_list(st.dtypes, "--dtypes"),
                     **{**spec, "overrides": parse_assignments(spec["overrides"]),
                        "method_options": parse_method_options(spec["method_options"])},
                     db=None if st.db is None else str(st.db), timeout=st.timeout, early_stop=st.early_stop,
                     executor=st.executor, ray_address=st.ray_address, jobs=st.jobs, start_method=st.start_method,
                     name=st.name, budget=st.budget)
    check_db(exp.db)
    if st.dry_run:
        console.print(dry_run_table(exp, stored_status(exp.db, [s.key() for s in exp.specs])))
        return
    t0 = time.monotonic()
    with _sigterm_as_interrupt():
        try:
            summary = xp.run(exp, rerun=st.rerun, progress=sweep_view.progress(st.progress))
        except KeyboardInterrupt:
            err_console.print(f"interrupted: the runs in flight were stopped; every finished run is in {exp.db}. "
                              "Run the same command again to resume.")
            raise
    for table in (summary_table(exp.db, [s.key() for s in exp.specs], exp.budget),
                  train_table(exp.db, [s.key() for s in exp.train_specs])):
        if table is not None:
            console.print(table)
    console.print(done_line(summary, time.monotonic() - t0, exp.db))
    bad = [(s, r) for s, r in summary.records if r.status in ("failed", "timeout")]
    for s, r in bad[:5]:
        err = (r.error or "").strip().splitlines()
        err_console.print(f"[red]{r.status}[/] {s.label}: {err[-1] if err else 'no error text'}")
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
