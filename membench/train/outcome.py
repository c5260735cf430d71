"""What a training run reports: its metrics, the config its database row holds, and one profiled step."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

from .batches import collate
from .setup import Prepared


def metrics_of(run: Prepared, fit, test: tuple[float, float], lr: float) -> dict[str, float]:
    cfg, labels, num_labels = run.cfg, run.labels, run.task.num_labels
    counts = [labels["train"].count(c) for c in range(num_labels)]
    majority = max(range(num_labels), key=lambda c: counts[c])
    step_times = [v for _, v in fit.series["step_time_s"]]
    metrics: dict[str, float] = {
        "accuracy": test[0],
        "test_loss": test[1],
        "val_accuracy": fit.best_accuracy,
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "early_stopped": float(fit.epochs_run < cfg.epochs),
        "majority_accuracy": labels["test"].count(majority) / len(labels["test"]),
        "final_train_loss": fit.series["train_loss_epoch"][-1][1],
        "step_time_s": statistics.median(step_times),
        "step_time_mean_s": statistics.fmean(step_times),
        "train_time_s": fit.train_time,
        "eval_time_s": fit.eval_time,
        "tokens_per_s": fit.tokens / fit.train_time if fit.train_time else 0.0,
        "steps": fit.steps,
        "n_train": len(labels["train"]),
        "n_validation": len(labels["validation"]),
        "n_test": len(labels["test"]),
        "num_labels": num_labels,
        "lr": lr,
        "epochs": cfg.epochs,
        "max_length": run.max_length,
        "seed": cfg.seed,
        "head_made_trainable": float(run.head_added),
        "max_rss_bytes": max_rss(),
    }
    peak = run.backend.max_allocated()
    if peak is not None:
        metrics["train_cuda_max_allocated_bytes"] = peak
    return metrics


def run_config(run: Prepared, result, lr: float) -> dict[str, Any]:
    """What the run row's `config` column holds: the profiled step's, plus the task and hyper-parameters."""
    from .. import dtypes
    from ..results import config_of

    cfg = run.cfg
    setup = {k: v for k, v in asdict(cfg).items() if k not in ("profile_memory",)}
    setup.update(task=run.task.name, split_rule=run.task.split_rule, task_source=run.task.source, lr=lr,
                 device=run.device, pretrained=run.pretrained, eval_limit=run.eval_limit, max_length=run.max_length)
    if result is not None:
        result.provenance["train"] = setup
        out = config_of(result)
    else:
        out = {"model": run.name, "method": cfg.method, "batch_size": cfg.batch_size, "seq_len": run.max_length,
               "dtype": dtypes.short(run.dtype), "device": run.device, "attn": cfg.attn, "overrides": run.overrides,
               "method_options": run.built.method_options}
    out.update({k: setup[k] for k in ("task", "dataset", "epochs", "limit", "eval_limit", "lr", "weight_decay",
                                      "warmup_ratio", "max_length", "patience", "seed", "pretrained")})
    out["kind"] = "train"
    return out


def profile_first_batch(run: Prepared, optimizer):
    """One real step of the largest training batch under the runner's profilers -> RunResult."""
    import torch

    from ..runner import profile_built

    longest = sorted(range(len(run.enc["train"])), key=lambda i: -len(run.enc["train"][i]["input_ids"]))
    longest = longest[:run.cfg.batch_size]
    batch = collate([run.enc["train"][i] for i in longest], [run.labels["train"][i] for i in longest], run.pad_id,
                    run.device)
    model = run.model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.random.fork_rng(devices=run.backend.rng_devices()):
        result = profile_built(run.built, batch, optimizer=optimizer, name=run.name,
                               extra={"pretrained": run.pretrained})
    with torch.no_grad():  # belt and braces: lr=0 leaves weights as they were; make sure of it
        params = dict(model.named_parameters())
        for n, v in before.items():
            params[n].copy_(v)
    model.zero_grad(set_to_none=True)
    return result


def max_rss() -> float:
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(rss if sys.platform == "darwin" else rss * 1024)
    except (ImportError, OSError):
        return float("nan")
