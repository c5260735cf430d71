"""Print the methods' memory table (markdown) that docs/methods.md shows.

    python benchmarks/methods_table.py                       # the documented table (fake tensors)
    python benchmarks/methods_table.py --models bert-base --methods full,houlsby

Methods come from the registry (`membench.methods.names()`, plugins included),
plus `full` and `lora` with every modifier, so MEFT's rows appear once it is
registered: re-run and paste. A method that rejects a model prints its error
in the row. Figures are one training step (forward, backward, AdamW) measured
by `membench.profile` on the fake backend (exact CPU kernels, no memory).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# (model, batch, sequence, dtype) as in the MEFT paper's comparisons
SETTINGS = [("bert-base", 16, 512, "fp32"), ("opt-1.3b", 8, 512, "bf16")]
MODIFIER_BASES = ("full", "lora")
MIB = 2**20


def method_specs() -> list[str]:
    from membench import methods

    specs = methods.names()
    for mod in methods.modifier_names():
        specs += [f"{base}+{mod}" for base in MODIFIER_BASES if base in specs]
    return specs


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f}"


def table(model: str, batch: int, seq: int, dtype: str, specs: list[str], device: str = "fake") -> str:
    from membench import profile
    from membench.errors import UserError

    head = (f"**{model}**, batch {batch}, sequence {seq}, {dtype}, device `{device}`\n\n"
            "| method | trainable params | activation MiB | recompute MiB | peak activation MiB "
            "| peak in | activation vs full | peak vs full |\n|---|---:|---:|---:|---:|---|---:|---:|")
    rows, full = [], None
    for spec in specs:
        t0 = time.perf_counter()
        try:
            r = profile(model, spec, batch_size=batch, seq_len=seq, dtype=dtype, device=device)
        except (UserError, RuntimeError, ValueError, NotImplementedError) as exc:
            rows.append(f"| {spec} | error: {str(exc).splitlines()[0][:90]} | | | | | | |")
            continue
        if spec == "full":
            full = r
        pct = f"{100 * r.num_trainable_params / r.num_params:.2f}%"
        rel = (f"{100 * r.activation_bytes / full.activation_bytes:.1f}%",
               f"{100 * r.peak_activation_bytes / full.peak_activation_bytes:.1f}%") if full else ("", "")
        rows.append(f"| {spec} | {r.num_trainable_params:,} ({pct}) | {_mib(r.activation_bytes)} "
                    f"| {_mib(r.recompute_bytes)} | {_mib(r.peak_activation_bytes)} | {r.peak_phase} "
                    f"| {rel[0]} | {rel[1]} |")
        print(f"  {model} {spec}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return "\n".join([head, *rows])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated named models (default: bert-base, opt-1.3b)")
    p.add_argument("--methods", default="", help="comma-separated method specs (default: the registry's)")
    p.add_argument("--device", default="fake", help="fake (default), cpu or cuda")
    args = p.parse_args(argv)
    specs = [s for s in args.methods.split(",") if s] or method_specs()
    if "full" in specs:  # the reference row first
        specs = ["full"] + [s for s in specs if s != "full"]
    wanted = [m for m in args.models.split(",") if m]
    settings = [s for s in SETTINGS if not wanted or s[0] in wanted]
    settings += [(m, 8, 512, "fp32") for m in wanted if m not in {s[0] for s in SETTINGS}]
    for model, batch, seq, dtype in settings:
        print(table(model, batch, seq, dtype, specs, args.device))
        print()


if __name__ == "__main__":
    main()
