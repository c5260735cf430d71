"""The training loop of `membench train`: explicit, seeded, profiled.

    outcome = run_training({"method": "lora", "limit": 200})
    outcome.metrics["accuracy"], outcome.series["train_loss"], outcome.result  # RunResult of one profiled step
    outcome.store("membench.db")                                              # one run row, kind="train"

    prepare (setup.py) -> profile one real step -> fit: epochs, validation, best epoch -> test -> metrics

Memory: before training, one step on the real model and the largest real batch
(the `batch_size` longest training examples, padded to the longest) runs under the
runner's `profile_built`, with AdamW at lr=0 (weights unchanged) and the RNG forked
(the training run is the same with or without it).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from .batches import batch_order, collate, linear_schedule
from .outcome import metrics_of, profile_first_batch, run_config
from .setup import Prepared, TrainConfig, TrainOutcome, check_config, prepare, seed_everything


def run_training(config: dict[str, Any] | TrainConfig,
                 progress: Callable[[str], None] | None = None) -> TrainOutcome:
    """Fine-tune, evaluate each epoch, test the best epoch; profile one real step. See module doc."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    check_config(cfg)
    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    run = prepare(cfg, say)
    lr, trainable, make_optimizer = _optimizer(run)
    result = None
    if cfg.profile_memory:  # one real step before training; weights unchanged, RNG forked
        say("profiling the memory of one training step")
        result = profile_first_batch(run, lambda ps: make_optimizer(ps, 0.0))
    seed_everything(cfg.seed)
    fit = _fit(run, trainable, make_optimizer(trainable), lr, say)
    say(f"testing epoch {fit.best_epoch} on {len(run.enc['test'])} test examples")
    t0 = time.perf_counter()
    test = evaluate(run.model, run.enc["test"], run.labels["test"], cfg.eval_batch_size, run.pad_id, run.device)
    fit.eval_time += time.perf_counter() - t0
    metrics = metrics_of(run, fit, test, lr)
    metrics["total_time_s"] = time.perf_counter() - t_start
    return TrainOutcome(metrics=metrics, series=fit.series, result=result, config=run_config(run, result, lr))


def _optimizer(run: Prepared):
    """(lr, trainable parameters, params -> AdamW with weight decay on matrices only)."""
    import torch

    trainable = [p for p in run.model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in run.model.parameters())
    n_train_params = sum(p.numel() for p in trainable)
    lr = run.cfg.lr if run.cfg.lr is not None else (5e-5 if n_train_params > 0.1 * n_params else 5e-3)
    decay = {id(p) for p in trainable if p.dim() >= 2}

    def make_optimizer(params, lr_value=lr):
        params = list(params)
        groups = [{"params": [p for p in params if id(p) in decay], "weight_decay": run.cfg.weight_decay},
                  {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr_value)

    return lr, trainable, make_optimizer


@dataclass
class _Fit:
    series: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: {k: [] for k in (
        "train_loss", "lr", "step_time_s", "train_loss_epoch", "val_accuracy", "val_loss")})
    best_accuracy: float = -1.0
    best_epoch: int = 0
    epochs_run: int = 0
    steps: int = 0
    tokens: int = 0
    train_time: float = 0.0
    eval_time: float = 0.0


def _fit(run: Prepared, trainable, optimizer, lr: float, say) -> _Fit:
    """The epochs: train, validate, keep the best epoch's trainable weights (restored at the end)."""
    import torch

    cfg, model, device = run.cfg, run.model, run.device
    total_steps = math.ceil(len(run.enc["train"]) / cfg.batch_size) * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(int(cfg.warmup_ratio * total_steps),
                                                                             total_steps))
    run.backend.reset_peaks()
    fit, best_state, bad_epochs = _Fit(), None, 0
    series = fit.series
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    lengths = [len(e["input_ids"]) for e in run.enc["train"]]
    for epoch in range(1, cfg.epochs + 1):
        losses = []
        for idx in batch_order(lengths, cfg.batch_size, gen, cfg.group_by_length):
            batch = collate([run.enc["train"][i] for i in idx], [run.labels["train"][i] for i in idx], run.pad_id,
                            device)
            run.backend.synchronize()
            t0 = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            run.backend.synchronize()
            dt = time.perf_counter() - t0
            value = float(loss.detach())
            if not math.isfinite(value):
                raise UserError(f"training diverged at step {fit.steps} (loss {value}); lower --lr (now {lr:g})")
            fit.train_time += dt
            fit.tokens += int(batch["attention_mask"].sum())
            losses.append(value)
            series["train_loss"].append((fit.steps, value))
            series["lr"].append((fit.steps, scheduler.get_last_lr()[0]))
            series["step_time_s"].append((fit.steps, dt))
            fit.steps += 1
            if fit.steps % 10 == 0:
                say(f"epoch {epoch}/{cfg.epochs} step {fit.steps}/{total_steps} "
                    f"loss {statistics.fmean(losses[-10:]):.3f}")
        fit.epochs_run = epoch
        series["train_loss_epoch"].append((epoch, statistics.fmean(losses)))
        say(f"epoch {epoch}: evaluating on {len(run.enc['validation'])} validation examples")
        t0 = time.perf_counter()
        acc, vloss = evaluate(model, run.enc["validation"], run.labels["validation"], cfg.eval_batch_size,
                              run.pad_id, device)
        fit.eval_time += time.perf_counter() - t0
        series["val_accuracy"].append((epoch, acc))
        series["val_loss"].append((epoch, vloss))
        if acc > fit.best_accuracy:
            best_state = ({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                          if epoch < cfg.epochs else None)
            fit.best_accuracy, fit.best_epoch, bad_epochs = acc, epoch, 0
        else:
            bad_epochs += 1
            if cfg.patience and bad_epochs >= cfg.patience:
                say(f"early stop after epoch {epoch}: no better validation accuracy for {bad_epochs} epoch(s)")
                break
    if fit.best_epoch != fit.epochs_run and best_state is not None:  # restore the best epoch's trainable weights
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in best_state.items():
                params[n].copy_(v)
    return fit


def evaluate(model, encoded, labels, batch_size: int, pad_id: int, device) -> tuple[float, float]:
    """(accuracy, mean loss) on a split; examples sorted by length to pad less."""
    import torch

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    correct, loss_sum = 0, 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([encoded[i] for i in idx], [labels[i] for i in idx], pad_id, device)
            out = model(**batch)
            loss_sum += float(out.loss) * len(idx)
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
    model.train()
    return correct / len(order), loss_sum / len(order)


