"""`membench fit`: the largest batch size per method that fits on a GPU, predicted without one."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..assignments import split_list
from ..errors import UserError
from ..gpu.specs import DEFAULT_GPU
from ..paths import output_file, write_text_atomic
from ..spec import RunSpec, option
from ..units import format_bytes
from . import app
from .format import Table, console, live_progress, progress_line, status
from .format import table as fmt_table
from .options import From, command


@dataclass
class FitSettings:
    """`membench fit`'s own options, besides the run description every probe shares."""

    methods: str = option("full,lora,meft3", "comma-separated methods")
    seq_lens: str | None = option(None, "comma-separated sequence lengths: a method x length grid")
    quants: str | None = option(None, "comma-separated bases to compare, a row per method each: none (the plain "
                                      "base), nf4, fp4, int8; the --quant-* options apply to the quantized ones")
    headroom: float = option(0.05, "fraction of the GPU's memory to leave free")
    max_batch_size: int = option(4096, "stop the search here")
    jobs: int | None = option(None, "profiles run at once, one process each; every row is searched at once "
                                    "(default: one per CPU core)", short="-j")
    exact: bool = option(False, "every probe a profile of the whole model: no replays of shallow profiles")
    out: Path | None = option(None, "write the rows as JSON")


# what every probe shares: the run description but what the search varies or a fit always sets (the method,
# the batch size, fake tensors for a CUDA target) and what a fit does not take (a checkpoint, a seed, images)
SEARCHED = ("method", "batch_size", "device", "target", "method_options", "pretrained", "seed", "image_size", "tiny")
SHARED = tuple(f.name for f in dataclasses.fields(RunSpec) if f.name not in SEARCHED)


@command(app, "fit", From(RunSpec, "spec", names=SHARED, defaults={"model": ..., "gpu": DEFAULT_GPU}),
         From(FitSettings, "settings", build=True))
def fit(spec: dict, settings: FitSettings) -> None:
    """Find, per method, the largest batch size whose predicted peak (reserved + CUDA context) fits the GPU."""
    from ..fit import SCHEMA_VERSION as FIT_SCHEMA_VERSION
    from ..fit import Search, Watch
    from ..fit import fit as run_fit
    from ..gpu import specs
    from .run import spec_from_flags

    seq_len, seq_lens = spec.pop("seq_len"), settings.seq_lens
    if seq_len is not None and seq_lens is not None:  # which one would win is a guess: refuse both
        raise UserError(f"give --seq-len (one length) or --seq-lens (a grid), not both (got {seq_len} and {seq_lens})")
    gpu = specs.get(spec["gpu"])
    lens = split_list(seq_lens, "--seq-lens", int) if seq_lens is not None else [seq_len]  # [None]: the default
    if settings.out is not None:
        output_file(settings.out, "--out")
    quants = None
    if settings.quants is not None:
        if spec.get("quant") is not None:  # which would win is a guess: refuse both
            raise UserError(f"give --quant (one base) or --quants (a row per base), not both (got {spec['quant']} "
                            f"and {settings.quants})")
        quants = [None if q.lower() == "none" else q for q in split_list(settings.quants, "--quants")]
    run_spec = spec_from_flags({**spec, "gpu": gpu.name})
    with _progress() as shown:
        rows = run_fit(run_spec, split_list(settings.methods, "--methods"), seq_lens=lens, headroom=settings.headroom,
                       search=Search(settings.max_batch_size, settings.jobs, settings.exact), quants=quants,
                       watch=Watch(**shown))
    given_context = run_spec.context is not None
    console.print(fit_table(rows, gpu, settings.headroom, given_context=given_context, recipe=_recipe(run_spec)))
    if settings.out is not None:
        data = {"schema_version": FIT_SCHEMA_VERSION, "model": run_spec.model, "gpu": gpu.name, "dtype": rows[0].dtype,
                "precision": run_spec.training_precision.name, "optimizer": run_spec.optimizer,
                "grad_accum": run_spec.grad_accum, "quant": run_spec.quantized.label if run_spec.quant else None,
                "headroom": settings.headroom, "memory_bytes": gpu.memory_bytes,
                "context_source": "given (--context)" if given_context else "GPU table (typical, lazy loading)",
                "rows": [r.to_dict() for r in rows]}
        write_text_atomic(settings.out, json.dumps(data, indent=2) + "\n")
        console.print(f"wrote {settings.out}")


@contextlib.contextmanager
def _progress():
    """On a terminal a live line (what is probed now); elsewhere (a pipe, a log) one line per finished probe."""
    if live_progress():
        with status("fitting") as say:
            yield {"progress": say}
    else:
        yield {"probed": _probe_line}


def _probe_line(method: str, seq: int, batch: int, peak: int, fits: bool) -> None:
    progress_line(f"fit {method} s{seq} batch {batch}: {format_bytes(peak)} predicted, "
                  + ("fits" if fits else "does not fit"))


def _recipe(spec) -> str:
    """'fp32 · adamw' and, where given, the precision and accumulation: what every row's probes ran."""
    precision = spec.training_precision
    quant = [f"{spec.quantized.label} base"] if spec.quant else []  # (--quants: a column of the table)
    parts = [spec.dtype, *quant] + ([precision.name] if precision.mixed else []) + [spec.optimizer]
    if spec.grad_accum > 1:
        parts.append(f"micro-batch x{spec.grad_accum} accumulated")
    return " · ".join(parts)


def fit_table(rows, spec, headroom: float, given_context: bool = False, recipe: str = "") -> Table:
    budget = rows[0].budget_bytes if rows else 0
    context = rows[0].context_bytes if rows else spec.context_bytes
    context_said = (f"{format_bytes(context)}, given" if given_context else
                    f"~{format_bytes(context)}, typical with lazy loading, approximate")
    sizes = ("peak there", "its peak", "over by")
    t = fmt_table(f"{rows[0].model if rows else ''} on {spec.name} ({format_bytes(spec.memory_bytes)}, "
                  f"{headroom * 100:g}% headroom: {format_bytes(budget)}): largest "
                  f"{'micro-' if 'accumulated' in recipe else ''}batch size, predicted"
                  + (f" ({recipe})" if recipe else ""),
                  [("method", "left"), ("base", "left"), ("seq", "right"), ("max batch", "right"),
                   ("peak there", "right"), ("next batch", "right"), ("its peak", "right"), ("over by", "right")],
                  keep=("method",), whole=sizes, constant=("seq", "base"),
                  caption="peak = predicted max_memory_reserved over two training steps + CUDA context "
                          f"({context_said}); max batch 0: batch size 1 "
                          "does not fit")
    for r in rows:
        peak = format_bytes(r.predicted_max_reserved_bytes + r.context_bytes) if r.max_batch_size else "-"
        nxt = str(r.first_failing_batch_size) if r.first_failing_batch_size else "-"
        its = (format_bytes(r.first_failing_reserved_bytes + r.context_bytes)
               if r.first_failing_reserved_bytes is not None else "-")
        over = format_bytes(r.over_by_bytes) if r.over_by_bytes is not None else "-"
        best = f"[green]{r.max_batch_size}[/]" if r.max_batch_size else "[red]0[/]"
        t.add_row(r.method, r.quant or "plain", str(r.seq_len), best, peak, nxt, its, over)
    return t
