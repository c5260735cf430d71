"""`membench run --trainer-args FILE`: the HF Trainer's `TrainingArguments` (a JSON or YAML file of its fields)
as the run options membench predicts (no torch).

Each field is one of: mapped to a run option (one table, FIELDS); about training but not memory (left out, said
once); about memory but not something membench models (named, one line each: the prediction is without it);
or unknown (named). Nothing is dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

# fields that change what a step keeps in memory, which membench does not model (the prediction leaves them out)
UNMODELLED = {
    "deepspeed": "DeepSpeed ZeRO sharding", "fsdp": "FSDP sharding", "fsdp_config": "FSDP sharding",
    "torch_compile": "torch.compile (fused kernels save other tensors)", "optim_args": "optimizer arguments",
    "gradient_checkpointing_kwargs": "checkpointing options (membench checkpoints non-reentrantly)",
    "max_grad_norm": "gradient clipping's norm temporaries", "group_by_length": "batches of varying length",
    "auto_find_batch_size": "the batch size search (membench fit does it)",
    "torch_empty_cache_steps": "emptying the allocator cache", "use_cpu": "training on the CPU",
    "half_precision_backend": "an AMP backend other than torch's", "neftune_noise_alpha": "NEFTune noise",
    "ddp_find_unused_parameters": "DDP", "ddp_bucket_cap_mb": "DDP gradient buckets", "local_rank": "DDP",
}

# about training, not about the memory of a step
NOT_MEMORY = frozenset(["output_dir", "overwrite_output_dir", "do_train", "do_eval", "do_predict", "eval_strategy", "evaluation_strategy", "prediction_loss_only", "per_device_eval_batch_size", "eval_accumulation_steps", "eval_delay", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "num_train_epochs", "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps", "log_level", "log_level_replica", "log_on_each_node", "logging_dir", "logging_strategy", "logging_first_step", "logging_steps", "logging_nan_inf_filter", "save_strategy", "save_steps", "save_total_limit", "save_safetensors", "save_on_each_node", "save_only_model", "data_seed", "jit_mode_eval", "bf16_full_eval", "fp16_full_eval", "tf32", "dataloader_drop_last", "eval_steps", "dataloader_num_workers", "dataloader_prefetch_factor", "run_name", "disable_tqdm", "remove_unused_columns", "label_names", "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "ignore_data_skip", "report_to", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "resume_from_checkpoint", "include_inputs_for_metrics", "include_for_metrics", "eval_do_concat_batches", "full_determinism", "dataloader_pin_memory", "dataloader_persistent_workers", "skip_memory_metrics", "label_smoothing_factor", "length_column_name", "batch_eval_metrics", "eval_on_start", "restore_callback_states_from_checkpoint", "average_tokens_across_devices", "dataset_text_field", "packing", "dataset_num_proc"])


@dataclass
class Recipe:
    """What a TrainingArguments file says, as run options, and the lines that say what it could not honour."""

    options: dict[str, Any]  # RunSpec fields (batch_size, grad_accum, precision, optimizer, seq_len, seed)
    checkpointing: bool  # gradient_checkpointing: the method gets +ckpt
    unmodelled: list[str]  # one line per field about memory that membench does not model
    not_memory: list[str]  # fields about training, not memory (left out)
    unknown: list[str]  # fields membench does not know


def load(path: str | Path) -> dict[str, Any]:
    """The fields of a JSON or YAML file (a mapping at the top)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--trainer-args {p}: a folder; give a JSON or YAML file of TrainingArguments fields")
    if not p.exists():
        raise UserError(f"--trainer-args {p}: no such file")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the file's
        raise UserError(f"--trainer-args {p}: not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
                        f"({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--trainer-args {p}: expected a mapping of TrainingArguments fields at the top")
    return data


def _int(field: str, value, path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"--trainer-args {path}: {field}={value!r} is not a positive integer")
    return value


def recipe(path: str | Path) -> Recipe:
    """The run options a TrainingArguments file sets (refusing values membench cannot state)."""
    data = load(path)
    options: dict[str, Any] = {}
    unmodelled, not_memory, unknown = [], [], []
    checkpointing = False
    for field, value in data.items():
        if field == "per_device_train_batch_size":
            options["batch_size"] = _int(field, value, path)
        elif field == "gradient_accumulation_steps":
            options["grad_accum"] = _int(field, value, path)
        elif field in ("bf16", "fp16"):
            if value:
                if "precision" in options:
                    raise UserError(f"--trainer-args {path}: bf16 and fp16 are both true; TrainingArguments "
                                    "refuses that too")
                options["precision"] = "bf16-mixed" if field == "bf16" else "16-mixed"
        elif field == "optim":
            from .. import optimizers

            try:
                options["optimizer"] = optimizers.from_hf(value)
            except UserError as exc:
                raise UserError(f"--trainer-args {path}: {exc}") from None
        elif field == "gradient_checkpointing":
            checkpointing = bool(value)
        elif field in ("max_seq_length", "max_length"):  # TRL's SFTConfig: the tokens of each sequence
            if value is not None:
                options["seq_len"] = _int(field, value, path)
        elif field == "seed":
            options["seed"] = int(value)
        elif field in UNMODELLED:
            if value not in (None, False, "", [], {}) and not (field == "max_grad_norm" and value == 0):
                unmodelled.append(f"{field}={value!r}: {UNMODELLED[field]} is not modelled; the prediction is "
                                  "without it")
        elif field in NOT_MEMORY:
            not_memory.append(field)
        else:
            unknown.append(field)
    return Recipe(options, checkpointing, unmodelled, not_memory, unknown)
