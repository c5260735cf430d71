"""Test-only method plugin for the memory gate (tests/test_benchcmp.py).

Load it with `PYTHONPATH=tests/plugins MEMBENCH_PLUGINS=benchcmp_worse`. It registers
`gate-probe`: full fine-tuning, unchanged, unless MEMBENCH_TEST_EXTRA_SAVE=1, in
which case the first Linear of the first layer saves one extra tensor for
backward (its output times ones: `mul` saves the ones), the kind of silent
regression the gate must catch. The output is numerically the same.
"""

from __future__ import annotations

import os

from membench.methods import register
from membench.methods.base import Method
from membench.methods.trainable import everything

EXTRA_SAVE_ENV = "MEMBENCH_TEST_EXTRA_SAVE"


def _save_one_more(module, args, output):
    import torch

    return output * torch.ones_like(output)


@register
class GateProbe(Method):
    name = "gate-probe"
    summary = "test only: full fine-tuning; with MEMBENCH_TEST_EXTRA_SAVE=1 saves one extra tensor"

    def apply(self, model, family, cfg):
        from torch import nn

        if os.environ.get(EXTRA_SAVE_ENV) == "1":
            first_layer = next(iter(family.stacks(model).values()))[0]
            linear = next(m for m in first_layer.modules() if isinstance(m, nn.Linear))
            linear.register_forward_hook(_save_one_more)
        return model

    def trainable(self, model, family, cfg):
        return everything
