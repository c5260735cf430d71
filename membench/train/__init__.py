"""`membench train`: fine-tune a registered method on a real text-classification task, offline.

    from membench.train import run_training
    metrics, series, result = run_training({"method": "lora", "limit": 200})
    run_training({...}).store("membench.db")      # one run of kind "train": accuracy, loss curve, memory

Imports no torch at module level. See docs/train-and-report.md.
"""

from __future__ import annotations

from .data import DEFAULT_TASK, Split, TaskData, load_task
from .fit import run_training
from .setup import DEFAULT_MODEL_NAME, TrainConfig, TrainOutcome

__all__ = ["run_training", "TrainConfig", "TrainOutcome", "load_task", "TaskData", "Split", "DEFAULT_TASK",
           "DEFAULT_MODEL_NAME"]
