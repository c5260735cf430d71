"""LoRA through peft: W x + (alpha/r) B A x on the attention's query and value projections; the base is frozen."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import register
from ._peft import default_targets, get_peft_model, peft_task_type
from .base import Method, MethodConfig, require_fraction, require_positive_int
from .trainable import marked


@dataclass
class LoraOptions(MethodConfig):
    r: int = 8
    alpha: int = 8
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)
    # peft keeps adapter weights in fp32 under a bf16/fp16 base (its default): more activation bytes
    autocast_adapter_dtype: bool = True

    def check(self, method):
        require_positive_int(method, "r", self.r, "the rank")  # peft refuses r <= 0 with a traceback
        require_fraction(method, "dropout", self.dropout)  # (alpha: any number; 0 only scales the update to 0)


@register
class Lora(Method):
    name = "lora"
    summary = "LoRA (peft): low-rank updates on attention projections, base frozen"
    Config = LoraOptions
    target_roles = ("query", "value")  # the attention's query and value projections (Family.roles)

    def defaults(self, family):
        return {"target_modules": default_targets(family, self.target_roles,
                                                  "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING")}

    def apply(self, model, family, cfg: LoraOptions):
        from peft import LoraConfig

        config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                            target_modules=list(cfg.target_modules), task_type=peft_task_type(family))
        return get_peft_model(model, config, autocast_adapter_dtype=cfg.autocast_adapter_dtype)

    def trainable(self, model, family, cfg):
        return marked(model)  # what peft marks: the LoRA factors, and a classifier's head (modules_to_save)
