"""`membench run`: profile one training step and print the per-layer table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import backends
from ..assignments import parse_options
from ..errors import UserError
from ..paths import output_file
from ..spec import RunSpec, option
from ..units import format_bytes
from . import app
from .format import Table, console, progress, warn
from .format import table as fmt_table
from .options import From, command


def headline(result) -> str:
    """"needs 1.34 GiB on a100-80gb (nvidia-smi, predicted)": the answer, where, which figure, how obtained."""
    n, figure, how = backends.needs(result)
    return f"needs {format_bytes(n)} on {backends.where(result)} ({figure}, {how})"


def _parts(result) -> str | None:
    """What a CUDA answer is made of, in the tables' words (a CPU answer is the breakdown's sum)."""
    n, figure, how = backends.needs(result)
    if figure == "estimated peak":
        return None
    if how == "predicted":
        p = result.predicted_cuda
        approx = "~" if "context_bytes" in p.approximate else ""
        paged = f" + paged optimizer state {format_bytes(p.paged_bytes)}" if p.get("paged_bytes") else ""
        return (f"= max reserved {format_bytes(p.max_reserved_bytes)} + CUDA context {approx}"
                f"{format_bytes(p.context_bytes)} ({p.context_source}){paged}")
    reserved = result.cuda.get("max_reserved_bytes")
    if figure == "nvidia-smi":
        return f"= max reserved {format_bytes(reserved)} + the CUDA context (+ other processes), as NVML saw it"
    return f"= max reserved {format_bytes(reserved)} ({how}) + CUDA context ~{format_bytes(n - reserved)} (NVML unavailable)"


def print_result(result) -> None:
    console.print(f"[bold]{headline(result)}[/]", highlight=False)
    parts = _parts(result)
    if parts:
        console.print(f"  {parts}", highlight=False)
    _, figure, how = backends.needs(result)
    answer = {"estimated peak": "breakdown", "max reserved + ~context": None}.get(
        figure, "nvml" if backends.measured_on_gpu(result) else "predicted")  # the row that is the answer, if one is
    caption = (backends.describe(result.device, result.target, result.gpu, form="caption")
               + "; a saved tensor is charged to the first module that saves it")
    if result.provenance.get("extrapolated"):
        caption += f"; {result.provenance['extrapolation']}"
    if result.loss_kind == "sum":
        caption += ("; loss: a pseudo-loss, the sum of the first output tensor (pass loss_fn for your "
                    "training loss)")
    precision = f" · {result.precision}" if result.precision and result.precision.endswith("-mixed") else ""
    precision += f" · {result.quant} base" if result.quant else ""
    table = fmt_table(f"{result.model} · {result.method} · {result.shape_label} · "
                      f"{result.dtype}{precision} · {result.device}",
                      [("layer", "left"), ("saved for backward", "right"), ("recomputed in backward", "right")],
                      keep=("layer",), whole=("saved for backward", "recomputed in backward"), caption=caption)
    for row in result.layers:
        table.add_row(row.name, format_bytes(row.activation_bytes),
                      format_bytes(row.recompute_bytes) if row.recompute_bytes else "")
    table.add_section()
    table.add_row("[bold]total", f"[bold]{format_bytes(result.activation_bytes)}",
                  format_bytes(result.recompute_bytes) if result.recompute_bytes else "")
    console.print(table)

    bd = fmt_table("memory breakdown of one step", [("what", "left"), ("bytes", "right")], show_header=False)
    pct = 100 * result.num_trainable_params / max(result.num_params, 1)
    bd.add_row("parameters", f"{format_bytes(result.param_bytes)} ({result.num_params:,})")
    bd.add_row("trainable parameters", f"{format_bytes(result.trainable_param_bytes)} "
                                       f"({result.num_trainable_params:,}, {pct:.2f}%)")
    bd.add_row("gradients", format_bytes(result.grad_bytes))
    bd.add_row(f"optimizer state ({result.optimizer or 'AdamW'})", format_bytes(result.optimizer_bytes))
    bd.add_row("activations (saved at end of forward)", format_bytes(result.activation_bytes))
    bd.add_row(f"peak activations + temporaries ({result.peak_phase})", format_bytes(result.peak_activation_bytes))
    if result.input_bytes:
        bd.add_row("model inputs", format_bytes(result.input_bytes))
    if result.weight_copy_bytes:
        bd.add_row("weight copies saved (casts)", format_bytes(result.weight_copy_bytes))
    peak = format_bytes(result.estimated_peak_bytes)
    if answer == "breakdown":
        bd.add_row("[bold]needs: estimated peak of the step", f"[bold]{peak}")
    else:
        bd.add_row("estimated peak of the step (tensors only)", peak)
    if result.cuda:
        bd.add_section()
        bd.add_row("CUDA max allocated", format_bytes(result.cuda.get("max_allocated_bytes")))
        bd.add_row("CUDA max reserved (allocated + the allocator's cache)",
                   format_bytes(result.cuda.get("max_reserved_bytes")))
        bd.add_row("CUDA activation (paper: peak - after step)", format_bytes(result.cuda.get("paper_activation_bytes")))
    if result.nvml:
        used = result.nvml.get("peak_used_bytes")
        shown = format_bytes(used) if result.nvml.get("available") else "unavailable"
        bd.add_row("[bold]needs: NVML device used (peak), as nvidia-smi" if answer == "nvml" else
                   "NVML device used (peak)", shown)
    console.print(bd)
    if result.predicted_cuda is not None:
        console.print(predicted_table(result, answer=answer == "predicted"))


def predicted_table(result, answer: bool = False) -> Table:
    """The allocator model's figures; `answer`: its nvidia-smi row is what the run needs."""
    p = result.predicted_cuda
    how = "from this run's own allocations" if backends.measured_on_gpu(result) else "without a GPU"
    t = fmt_table(f"CUDA memory on {p.gpu}, predicted {how}", [("what", "left"), ("bytes", "right")],
                  show_header=False,
                  caption="allocator figures: the step's allocations replayed through a model of PyTorch's "
                          "caching allocator; ~ approximate")
    t.add_row("max allocated (torch.cuda.max_memory_allocated)", format_bytes(p.max_allocated_bytes))
    t.add_row("max reserved (torch.cuda.max_memory_reserved): allocated + the allocator's cache",
              format_bytes(p.max_reserved_bytes))
    t.add_row("allocated after the step", format_bytes(p.allocated_after_step_bytes))
    t.add_row("activations (paper: max allocated - after the step)", format_bytes(p.activation_bytes_paper))
    t.add_row("  of it cuBLAS/cuBLASLt workspaces", format_bytes(p.cublas_workspace_bytes))
    if p.phases:
        t.add_row("max allocated per phase", "\n".join(f"{name} {format_bytes(v['max_allocated_bytes'])}"
                                                       for name, v in p.phases.items()))
    approx = "context_bytes" in p.approximate
    t.add_row(f"{'~ ' if approx else ''}CUDA context (not in the allocator): {p.context_source}",
              format_bytes(p.context_bytes))
    paged = p.get("paged_bytes") or 0
    if paged:
        t.add_row("paged optimizer state (CUDA unified memory: not in the allocator, in nvidia-smi while "
                  "resident)", format_bytes(paged))
    smi = "~ nvidia-smi at the peak (max reserved + context" + (" + paged state)" if paged else ")")
    t.add_row(f"[bold]needs: {smi}" if answer else smi,
              f"[bold]{format_bytes(p.nvidia_smi_bytes)}" if answer else format_bytes(p.nvidia_smi_bytes))
    if p.sdpa_backends:
        t.add_row("attention kernel (SDPA)", ", ".join(f"{k} x{v}" for k, v in p.sdpa_backends.items()))
    for what, value in p.settings():
        t.add_row(what, value)
    return t


@dataclass
class RunSettings:
    """`membench run`'s own options, besides the run description (membench.spec.RunSpec)."""

    checkpointing: bool = option(False, "gradient checkpointing (non-reentrant) of every layer: METHOD+ckpt")
    trainer_args: Path | None = option(None, "the HF Trainer's TrainingArguments (JSON or YAML): batch size, "
                                             "accumulation, bf16/fp16, optim, gradient checkpointing, max length")
    snapshot: Path | None = option(None, "CUDA only: dump a memory_viz snapshot here")
    exact: bool = option(False, "profile every layer: no exact extrapolation from shallow copies (deep fake runs)")
    out: Path | None = option(None, "write the result as JSON")
    db: Path | None = option(None, "also store the run in this results database")


@command(app, "run", From(RunSpec, "spec"), From(RunSettings, "settings", build=True))
def run(spec: dict, settings: RunSettings) -> None:
    """Profile one training step (forward, backward, AdamW) of MODEL fine-tuned with METHOD."""
    from ..runner import profile

    if settings.trainer_args is not None:
        spec, settings.checkpointing = _with_trainer_args(spec, settings)
    spec = spec_from_flags(spec)
    if not spec.model and not spec.pretrained:
        raise UserError("give --model NAME (see `membench list`) or --pretrained PATH")
    for path, flag in ((settings.out, "--out"), (settings.snapshot, "--snapshot")):  # before the profile
        if path is not None:
            output_file(path, flag)
    if settings.db is not None:
        from ..results.schema import check_writable

        check_writable(settings.db)
    if settings.checkpointing and "ckpt" in spec.method_spec.modifiers:  # harmless: it checkpoints once either way
        warn(f"--checkpointing: --method {spec.method} already checkpoints every layer; the flag adds nothing")
    elif settings.checkpointing:
        spec = spec.replace(method=spec.method_spec.with_modifier("ckpt").name)
    spec = spec.validate()
    with progress("profiling") as say:
        result = profile(spec, snapshot=str(settings.snapshot) if settings.snapshot else None, progress=say,
                         exact=settings.exact)
    print_result(result)
    if settings.out is not None:
        result.save(str(settings.out))
        console.print(f"wrote {settings.out}")
    if settings.db is not None:
        from ..result import RunRecord
        from ..results import store_result

        store_result(str(settings.db), RunRecord(result=result, config=spec.to_dict()))
        console.print(f"stored in {settings.db}")


def _with_trainer_args(given: dict, settings: RunSettings) -> tuple[dict, bool]:
    """The flags with a TrainingArguments file's recipe filled in (a flag that says otherwise is refused), and
    whether to checkpoint; every field not honoured is said."""
    import dataclasses

    from ..integrations import trainer_args
    from ..spec import flag_of

    recipe = trainer_args.recipe(settings.trainer_args)
    defaults = {f.name: f.default for f in dataclasses.fields(RunSpec)}
    merged = dict(given)
    for name, value in recipe.options.items():
        if given.get(name) not in (None, defaults.get(name), value):  # (a flag left at its default gives way)
            raise UserError(f"{flag_of(name)} {given[name]} and --trainer-args {settings.trainer_args} "
                            f"({value}) disagree; give one")
        merged[name] = value
    for line in recipe.unmodelled:
        warn(f"--trainer-args: {line}")
    for field in recipe.unknown:
        warn(f"--trainer-args: {field} is not a TrainingArguments field membench knows; left out")
    if recipe.not_memory:
        console.print(f"--trainer-args: about training, not memory (left out): {', '.join(recipe.not_memory)}",
                      highlight=False)
    return merged, settings.checkpointing or recipe.checkpointing


def spec_from_flags(given: dict) -> RunSpec:
    """The RunSpec of a command's flags: the repeatable KEY=VALUE options parsed, unset flags left out."""
    from ..assignments import parse_assignments

    values = {k: v for k, v in given.items() if v is not None}
    values["overrides"] = parse_assignments(given.get("overrides"))
    values["method_options"] = parse_options(given.get("method_options"))
    return RunSpec(**values)
