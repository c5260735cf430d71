"""`membench fit`: the largest batch size per method that fits on a GPU, predicted without one."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..assignments import split_list
from ..paths import output_file, write_text_atomic
from ..units import format_bytes
from . import app
from .format import console, status


@app.command()
def fit(
    model: str = typer.Option(..., "--model", "-m", help="named model (see `membench list`)"),
    methods: str = typer.Option("full,lora,meft3", "--methods", help="comma-separated methods"),
    gpu: str = typer.Option("a100-80gb", "--gpu", help="the GPU (`membench list --gpus`)"),
    seq_len: int = typer.Option(None, "--seq-len", "-s", help="tokens per sequence (default 512; image models: "
                                                                 "fixed by the image size)"),
    seq_lens: str = typer.Option(None, "--seq-lens", help="comma-separated sequence lengths: a method x length grid"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16, fp16 or fp64"),
    attn: str = typer.Option("sdpa", "--attn", help="attention implementation: eager or sdpa"),
    headroom: float = typer.Option(0.05, "--headroom", help="fraction of the GPU's memory to leave free"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adamw-foreach, adamw-fused, adamw-forloop, sgd"),
    alloc_conf: str = typer.Option(None, "--alloc-conf", help="allocator options (PYTORCH_CUDA_ALLOC_CONF)"),
    override: list[str] = typer.Option(None, "--override", help="config KEY=VALUE (repeatable)"),
    max_batch_size: int = typer.Option(4096, "--max-batch-size", help="stop the search here"),
    jobs: int = typer.Option(None, "--jobs", "-j", help="profiles run at once, one process each; "
                                                        "every row is searched at once (default: one per CPU core)"),
    out: Path = typer.Option(None, "--out", help="write the rows as JSON"),
) -> None:
    """Find, per method, the largest batch size whose predicted peak (reserved + CUDA context) fits the GPU."""
    from .. import backbones
    from ..fit import fit as run_fit
    from ..gpu import specs

    spec = specs.get(gpu)
    lens = split_list(seq_lens, "--seq-lens", int) if seq_lens is not None else [seq_len]  # [None]: the default
    if out is not None:
        output_file(out, "--out")
    with status("fitting") as say:
        rows = run_fit(model, split_list(methods, "--methods"), gpu=spec.name, seq_lens=lens, dtype=dtype, attn=attn,
                       headroom=headroom, optimizer=optimizer, alloc_conf=alloc_conf,
                       overrides=backbones.parse_overrides(override), max_batch_size=max_batch_size, jobs=jobs,
                       progress=say)
    console.print(fit_table(rows, spec, headroom))
    if out is not None:
        data = {"model": model, "gpu": spec.name, "dtype": rows[0].dtype, "headroom": headroom,
                "memory_bytes": spec.memory_bytes, "rows": [r.to_dict() for r in rows]}
        write_text_atomic(out, json.dumps(data, indent=2) + "\n")
        console.print(f"wrote {out}")


def fit_table(rows, spec, headroom: float) -> Table:
    budget = rows[0].budget_bytes if rows else 0
    t = Table(title=f"{rows[0].model if rows else ''} on {spec.name} ({format_bytes(spec.memory_bytes)}, "
                    f"{headroom * 100:g}% headroom: {format_bytes(budget)}): largest batch size, predicted",
              caption="peak = predicted max_memory_reserved over two training steps + CUDA context "
                      f"(~{format_bytes(spec.context_bytes)}, approximate); max batch 0: batch size 1 does not fit")
    for col, just in (("method", "left"), ("seq", "right"), ("max batch", "right"), ("peak there", "right"),
                      ("next batch", "right"), ("its peak", "right"), ("over by", "right")):
        t.add_column(col, justify=just)
    for r in rows:
        peak = format_bytes(r.predicted_max_reserved_bytes + r.context_bytes) if r.max_batch_size else "-"
        nxt = str(r.first_failing_batch_size) if r.first_failing_batch_size else "-"
        its = (format_bytes(r.first_failing_reserved_bytes + r.context_bytes)
               if r.first_failing_reserved_bytes is not None else "-")
        over = format_bytes(r.over_by_bytes) if r.over_by_bytes is not None else "-"
        best = f"[green]{r.max_batch_size}[/]" if r.max_batch_size else "[red]0[/]"
        t.add_row(r.method, str(r.seq_len), best, peak, nxt, its, over)
    return t
