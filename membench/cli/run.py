"""`membench run`: profile one training step and print the per-layer table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..assignments import parse_options
from ..errors import UserError
from ..paths import output_file
from ..units import format_bytes
from . import app
from .format import console, status


def target_caption(result) -> str:
    """One line: what the figures describe (target, GPU) and how they were obtained."""
    if result.target == "cuda":
        if result.device == "cuda":
            return f"target: CUDA, measured on {result.gpu}"
        return (f"target: CUDA on {result.gpu}, predicted without a GPU: saved tensors exact (CUDA kernels), "
                "allocator figures from the caching-allocator model")
    if result.device == "fake":
        return "target: CPU kernels, predicted exactly with fake tensors (--target cuda for a GPU)"
    return "target: CPU, measured"


def print_result(result) -> None:
    caption = target_caption(result) + "; a saved tensor is charged to the first module that saves it"
    if result.loss_kind == "sum":
        caption += ("; loss: a pseudo-loss, the sum of the first output tensor (pass loss_fn for your "
                    "training loss)")
    table = Table(title=f"{result.model} · {result.method} · b{result.batch_size} s{result.seq_len} · "
                        f"{result.dtype} · {result.device}", caption=caption)
    table.add_column("layer")
    table.add_column("saved for backward", justify="right")
    table.add_column("recomputed in backward", justify="right")
    for row in result.layers:
        table.add_row(row.name, format_bytes(row.activation_bytes),
                      format_bytes(row.recompute_bytes) if row.recompute_bytes else "")
    table.add_section()
    table.add_row("[bold]total", f"[bold]{format_bytes(result.activation_bytes)}",
                  format_bytes(result.recompute_bytes) if result.recompute_bytes else "")
    console.print(table)

    bd = Table(title="memory breakdown of one step", show_header=False)
    bd.add_column("what")
    bd.add_column("bytes", justify="right")
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
    bd.add_row("[bold]estimated peak of the step", f"[bold]{format_bytes(result.estimated_peak_bytes)}")
    if result.cuda:
        bd.add_section()
        bd.add_row("CUDA max allocated", format_bytes(result.cuda.get("max_allocated_bytes")))
        bd.add_row("CUDA max reserved", format_bytes(result.cuda.get("max_reserved_bytes")))
        bd.add_row("CUDA activation (paper: peak - after step)", format_bytes(result.cuda.get("paper_activation_bytes")))
    if result.nvml:
        used = result.nvml.get("peak_used_bytes")
        bd.add_row("NVML device used (peak)", format_bytes(used) if result.nvml.get("available") else "unavailable")
    console.print(bd)
    if result.predicted_cuda:
        console.print(predicted_table(result))


def predicted_table(result) -> Table:
    p = result.predicted_cuda
    how = "from this run's own allocations" if result.device == "cuda" else "without a GPU"
    t = Table(title=f"CUDA memory on {p.get('gpu')}, predicted {how}", show_header=False,
              caption="allocator figures: the step's allocations replayed through a model of PyTorch's "
                      "caching allocator; ~ approximate")
    t.add_column("what")
    t.add_column("bytes", justify="right")
    t.add_row("max allocated (torch.cuda.max_memory_allocated)", format_bytes(p["max_allocated_bytes"]))
    t.add_row("max reserved (torch.cuda.max_memory_reserved)", format_bytes(p["max_reserved_bytes"]))
    t.add_row("allocated after the step", format_bytes(p["allocated_after_step_bytes"]))
    t.add_row("activations (paper: max allocated - after the step)", format_bytes(p["activation_bytes_paper"]))
    t.add_row("  of it cuBLAS/cuBLASLt workspaces", format_bytes(p["cublas_workspace_bytes"]))
    phases = p.get("phases", {})
    if phases:
        t.add_row("max allocated per phase (" + " / ".join(phases) + ")",
                  " / ".join(format_bytes(v["max_allocated_bytes"]) for v in phases.values()))
    t.add_row("~ CUDA context (not in the allocator)", format_bytes(p["context_bytes"]))
    t.add_row("~ nvidia-smi at the peak (reserved + context)", format_bytes(p["nvidia_smi_bytes"]))
    if p.get("sdpa_backends"):
        t.add_row("attention kernel (SDPA)", ", ".join(f"{k} x{v}" for k, v in p["sdpa_backends"].items()))
    if p.get("alloc_conf"):
        t.add_row("allocator config", p["alloc_conf"])
    return t


@app.command()
def run(
    model: str = typer.Option(None, "--model", "-m", help="named model (see `membench list`)"),
    method: str = typer.Option("full", "--method", help="method, optionally with modifiers: lora, full+ckpt"),
    checkpointing: bool = typer.Option(False, "--checkpointing",
                                       help="gradient checkpointing (non-reentrant) of every layer: METHOD+ckpt"),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="sequences per step"),
    seq_len: int = typer.Option(None, "--seq-len", "-s", help="tokens per sequence (default 512; not for "
                                                                 "image models)"),
    image_size: int = typer.Option(None, "--image-size", help="image models: pixels per side (default the "
                                                              "config's, 224); the sequence is its patches + 1"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16, fp16 or fp64"),
    device: str = typer.Option(None, "--device", help="cpu, fake or cuda (default: cuda if present, else fake)"),
    target: str = typer.Option(None, "--target", help="what --device fake predicts: cuda (default) or cpu"),
    gpu: str = typer.Option(None, "--gpu", help="the GPU a cuda target predicts (default a100-80gb; "
                                               "`membench list --gpus`)"),
    alloc_conf: str = typer.Option(None, "--alloc-conf", help="allocator options as PYTORCH_CUDA_ALLOC_CONF, "
                                                              "e.g. expandable_segments:True"),
    optimizer: str = typer.Option("adamw", "--optimizer",
                                  help="adamw (as the target runs it), adamw-foreach, adamw-fused, "
                                       "adamw-forloop or sgd"),
    attn: str = typer.Option("sdpa", "--attn", help="attention implementation: eager or sdpa"),
    override: list[str] = typer.Option(None, "--override", help="config KEY=VALUE (repeatable)"),
    option: list[str] = typer.Option(None, "--option", "-o", help="method option KEY=VALUE (repeatable)"),
    pretrained: str = typer.Option(None, "--pretrained", help="local checkpoint folder (offline)"),
    seed: int = typer.Option(0, "--seed"),
    snapshot: Path = typer.Option(None, "--snapshot", help="CUDA only: dump a memory_viz snapshot here"),
    out: Path = typer.Option(None, "--out", help="write the result as JSON"),
    db: Path = typer.Option(None, "--db", help="also store the run in this results database"),
) -> None:
    """Profile one training step (forward, backward, AdamW) of MODEL fine-tuned with METHOD."""
    from .. import backbones
    from ..runner import profile

    if not model and not pretrained:
        raise UserError("give --model NAME (see `membench list`) or --pretrained PATH")
    for path, flag in ((out, "--out"), (snapshot, "--snapshot")):  # before the profile, not after it
        if path is not None:
            output_file(path, flag)
    if db is not None:
        from ..results.schema import check_writable

        check_writable(db)
    overrides = backbones.parse_overrides(override)
    if checkpointing and "ckpt" not in method.split("+"):
        method += "+ckpt"
    with status("profiling") as say:
        result = profile(model, method, batch_size=batch_size, seq_len=seq_len, image_size=image_size,
                         dtype=dtype, device=device,
                         attn=attn, overrides=overrides, method_options=parse_options(option),
                         pretrained=pretrained, seed=seed, snapshot=str(snapshot) if snapshot else None,
                         progress=say, target=target, gpu=gpu, optimizer=optimizer, alloc_conf=alloc_conf)
    print_result(result)
    if out is not None:
        result.save(str(out))
        console.print(f"wrote {out}")
    if db is not None:
        from ..results import store_result

        store_result(str(db), result)
        console.print(f"stored in {db}")
