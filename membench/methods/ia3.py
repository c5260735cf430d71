"""(IA)^3 through peft (Liu et al. 2022): learned vectors rescale keys, values and the FFN activation.

Targets default to the modules playing the key, value and ffn_down roles in the
family (`Family.roles`; the paper's k, v and FFN-intermediate scaling: for a
feed-forward target peft scales the module's *input*), falling back to peft's own
mapping. The vectors start at 1, so the starting point is exactly the base model's.
The base is frozen; peft trains a classification head (`modules_to_save`).

On a bf16/fp16 model peft keeps the vectors in fp32 (`autocast_adapter_dtype`,
its default), so each scaled activation is promoted to fp32 and saved at twice
the size: (IA)^3 then saves more than full fine-tuning. `autocast_adapter_dtype=false`
keeps them in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from . import register
from ._peft import default_targets, get_peft_model, peft_task_type
from .base import Method, MethodConfig
from .trainable import marked


@dataclass
class IA3Options(MethodConfig):
    target_modules: list[str] = field(default_factory=list)
    feedforward_modules: list[str] = field(default_factory=list)
    autocast_adapter_dtype: bool = True  # peft's default: fp32 vectors on a bf16/fp16 model (costs activations)


@register
class IA3(Method):
    name = "ia3"
    summary = "(IA)^3 (peft): learned rescaling of keys, values and FFN activations, base frozen"
    Config = IA3Options
    target_roles = ("key", "value", "ffn_down")  # rescaled (Family.roles); ffn_down: its input, the activation
    feedforward_roles = ("ffn_down",)

    def defaults(self, family):
        return {"target_modules": default_targets(family, self.target_roles,
                                                  "TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING"),
                "feedforward_modules": default_targets(family, self.feedforward_roles,
                                                       "TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING")}

    def apply(self, model, family, cfg: IA3Options):
        from peft import IA3Config

        targets, ff = list(cfg.target_modules), list(cfg.feedforward_modules)
        if not targets:
            raise UserError(f"ia3: no target modules for {family.name}; give --option target_modules=a,b")
        missing = [m for m in ff if m not in targets]
        if missing:
            raise UserError(f"ia3: feedforward_modules {missing} must also be in target_modules {targets}")
        from transformers.pytorch_utils import Conv1D

        conv1d = any(isinstance(m, Conv1D) for m in model.modules())  # GPT-2's projections store W transposed
        config = IA3Config(target_modules=targets, feedforward_modules=ff, fan_in_fan_out=conv1d,
                           task_type=peft_task_type(family))
        try:
            return get_peft_model(model, config, autocast_adapter_dtype=cfg.autocast_adapter_dtype)
        except ValueError as exc:
            raise UserError(f"ia3 on {family.name}: {str(exc).splitlines()[0]}") from None

    def trainable(self, model, family, cfg):
        return marked(model)  # what peft marks: the scaling vectors, and a classifier's head (modules_to_save)
