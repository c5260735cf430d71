"""Sweeps: a grid of runs, each in its own process, stored run by run in the results database.

    from membench.sweep import Grid, run_sweep, make_executor
    specs = Grid(models=["opt-125m"], methods=["full", "lora"], seq_lens=[128], batch_sizes=[1, 4],
                 dtypes=["bf16"], run=RunSpec(device="fake")).expand()
    summary = run_sweep(specs, db="membench.db", executor=make_executor("local"))

Imports no torch (the runs do, in their own processes). See docs/sweep.md.
"""

from __future__ import annotations

from .config import load_experiment
from .driver import SweepSummary, run_sweep
from .executors import Executor, LocalExecutor, RayExecutor, make_executor
from .spec import Grid, RunSpec

__all__ = ["Grid", "RunSpec", "run_sweep", "SweepSummary", "make_executor", "Executor", "LocalExecutor",
           "RayExecutor", "load_experiment"]
