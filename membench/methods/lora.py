"""LoRA through peft: W x + (alpha/r) B A x on the family's usual targets; the base is frozen."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import register
from ._peft import default_targets, peft_task_type
from .base import Method, MethodConfig


@dataclass
class LoraOptions(MethodConfig):
    r: int = 8
    alpha: int = 8
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)
    # peft keeps adapter weights in fp32 under a bf16/fp16 base (its default): more activation bytes
    autocast_adapter_dtype: bool = True


@register
class Lora(Method):
    name = "lora"
    summary = "LoRA (peft): low-rank updates on attention projections, base frozen"
    Config = LoraOptions

    def defaults(self, family):
        return {"target_modules": default_targets(family, family.lora_targets,
                                                  "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING")}

    def apply(self, model, family, cfg: LoraOptions):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                            target_modules=list(cfg.target_modules), task_type=peft_task_type(family))
        return get_peft_model(model, config, autocast_adapter_dtype=cfg.autocast_adapter_dtype)
