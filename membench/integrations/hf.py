"""A callback for transformers' `Trainer`: profile one training step of the user's own run with membench.

    from membench.integrations.hf import MembenchCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[MembenchCallback("reports/step.json")])
    trainer.train()

When training begins, the callback takes the run's first batch (from the Trainer's own dataloader, collated as
training will), and profiles one step of the Trainer's model on it with membench's profilers: forward under
the run's precision (TrainingArguments bf16/fp16: bf16-mixed/16-mixed autocast, fp16 with a GradScaler),
backward, and the Trainer's own optimizer. It then restores the weights, the optimizer state and the random
state, so training goes on as if it had not run. The result is a membench RunResult (per-layer saved bytes, the
peaks; on a GPU the allocator's figures per phase), written as JSON and, with `db=`, stored in a results
database. Rows are the model's largest ModuleList's items (its layers), as `membench.profile_module`'s.
"""

from __future__ import annotations

import copy
from pathlib import Path

from transformers import TrainerCallback


class Recorder:
    """Where a callback's result goes: a JSON file and a results database, each checked when the callback is made
    (a bad path fails before training starts)."""

    def __init__(self, out: str | Path | None, db: str | Path | None):
        from ..paths import output_file

        self.out, self.db = out, db
        if out is not None:
            output_file(out, "out")
        if db is not None:
            from ..results.schema import check_writable

            check_writable(db)

    def keep(self, result):
        if self.out is not None:
            result.save(str(self.out))
        if self.db is not None:
            from ..result import RunRecord
            from ..results import store_result

            store_result(str(self.db), RunRecord(result=result))
        return result


def trainer_precision(args) -> str:
    """The membench precision of a TrainingArguments (bf16=True is bf16-mixed, fp16=True is 16-mixed)."""
    return "bf16-mixed" if getattr(args, "bf16", False) else "16-mixed" if getattr(args, "fp16", False) else ""


class MembenchCallback(TrainerCallback):
    """Profile one training step of the Trainer's run before it trains (module docstring).

    `out`: where the result's JSON goes (None: nowhere); `db`: a results database to store it in; `name`:
    what the result calls the model (default: its class name). After training starts, `.result` is the
    RunResult."""

    def __init__(self, out: str | Path | None = "membench-step.json", db: str | Path | None = None,
                 name: str | None = None):
        self.recorder = Recorder(out, db)
        self.name = name
        self.result = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        if not state.is_world_process_zero or model is None or train_dataloader is None:
            return
        import torch

        with torch.random.fork_rng():  # drawing the batch draws the sampler's seed: leave the run's RNG as it was
            batch = next(iter(train_dataloader))
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper: the torch optimizer in it
        self.result = self.recorder.keep(profile_trainer_step(model, batch, optimizer, args, name=self.name))


def profile_trainer_step(model, batch: dict, optimizer, args, *, name: str | None = None):
    """One step of `model` on `batch` with `optimizer` in `args`' precision, profiled; the model, the optimizer
    and the random state are left as they were."""
    import torch

    device = next(model.parameters()).device.type
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    accum = max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))
    return profile_step_restored(model, model, batch, optimizer, precision=trainer_precision(args) or None,
                                 accum=accum, name=name or type(model).__name__,
                                 source="transformers Trainer (membench.integrations.hf)")


def profile_step_restored(model, runs, batch, optimizer, *, precision: str | None, accum: int, name: str, source: str):
    """Profile one step of `runs` (a module whose call on `batch` gives the output the loss is read from; `model`,
    or a wrapper of its training step) with `optimizer` (None: AdamW), in `precision` with `accum` micro-steps;
    then restore `model`'s weights, the optimizer's state and the random state. Rows: `model`'s largest ModuleList.
    """
    import time

    import torch

    from .. import optimizers
    from .. import precision as precisions
    from ..backends import for_tensors
    from ..profilers.step import profile_step
    from ..runner.module import auto_groups, batch_shape
    from ..runner.summary import to_result
    from ..spec import RunSpec

    t0 = time.perf_counter()
    backend = for_tensors(next(model.parameters()).device.type)
    recipe = precisions.get(precision) if precision else None
    # gradient accumulation: that many forward/backward passes (on this batch: the memory of any batch of its
    # shape) before the optimizer step, as the trainer runs them
    plan = backend.plan(optimizers.DEFAULT, precision=recipe, micro_steps=accum)
    if optimizer is not None:  # the trainer's own optimizer (its state is restored afterwards)
        plan.optimizer, plan.optimizer_name = (lambda params: optimizer), type(optimizer).__name__
        plan.host_state = plan.paged_state = None
    groups, order = auto_groups(model)
    if runs is not model:
        groups = {**groups, runs: "outside"}
    # every parameter and buffer, kept on the CPU, put back by identity afterwards (not through state_dict: a
    # quantized base's weights serialize their quant state, which a plain load_state_dict refuses)
    weights = [(t, t.detach().to("cpu", copy=True)) for t in [*model.parameters(), *model.buffers()]]
    state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    was_training = model.training
    with torch.random.fork_rng(devices=backend.rng_devices()):
        try:
            step = profile_step(runs, batch, plan, groups=groups)
        finally:
            _restore(weights)
            if optimizer is not None:
                optimizer.load_state_dict(state)
                optimizer.zero_grad(set_to_none=True)
            model.train(was_training)
    b, s, shape = batch_shape(batch if not isinstance(batch, tuple) else batch[0])
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    spec = RunSpec(model=name, method="trainer", batch_size=b, seq_len=s, dtype=dtype, device=backend.device,
                   attn="", precision=recipe.name if recipe else None, grad_accum=accum)
    from ..quant.base import label_of_model

    result = to_result(step, order, spec, backend, plan=plan, wall_s=time.perf_counter() - t0, input_shape=shape,
                       extra={"source": source})
    result.quant = label_of_model(model)  # a QLoRA model: its quantized base
    return result


def _restore(weights) -> None:
    """Put each tensor's saved values back: in place, or as new data where the step changed its dtype or shape
    (bitsandbytes' Linear4bit casts its bias to the compute dtype in its first forward)."""
    import torch

    with torch.no_grad():
        for t, saved in weights:
            if t.dtype == saved.dtype and t.shape == saved.shape:
                t.copy_(saved)
            else:
                t.data = saved.to(t.device)
