"""A Lightning callback: profile one training step of the user's own `LightningModule` run with membench.

    from membench.integrations.lightning import MembenchCallback
    trainer = L.Trainer(max_steps=100, precision="bf16-mixed", callbacks=[MembenchCallback("reports/step.json")])

Before the first batch trains, the callback profiles one step on that batch: the module's own
`training_step` (its loss), backward, and the Trainer's first optimizer, in the Trainer's precision (Lightning's
names are membench's: bf16-mixed, 16-mixed, ...) and gradient accumulation. It then restores the weights, the
optimizer state and the random state, so training goes on as without it. The result is a membench RunResult,
written as JSON (and with `db=` stored in a results database), rows by the module's largest ModuleList.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from .hf import Recorder, profile_step_restored


class MembenchCallback(Callback):
    """Profile one training step of the Lightning run before its first batch trains (module docstring)."""

    def __init__(self, out: str | Path | None = "membench-step.json", db: str | Path | None = None,
                 name: str | None = None):
        self.recorder = Recorder(out, db)
        self.name = name
        self.result = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.result is not None or not trainer.is_global_zero:
            return
        import torch

        class TrainingStep(torch.nn.Module):
            """The module's training_step as a forward: what the step computes, its loss the output."""

            def __init__(self, module):
                super().__init__()
                self.module = module

            def forward(self, batch):
                out = self.module.training_step(batch, 0)
                return out["loss"] if isinstance(out, dict) else out

        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        precision = str(trainer.precision)
        self.result = self.recorder.keep(profile_step_restored(
            pl_module, TrainingStep(pl_module), (batch,), optimizer, precision=precision if precision.endswith(
                "-mixed") else None, accum=trainer.accumulate_grad_batches, name=self.name or type(pl_module).__name__,
            source="Lightning Trainer (membench.integrations.lightning)"))
