"""Check the profilers against a real GPU: saved-tensor ledger, CUDA allocator, fake-tensor prediction.

    python benchmarks/gpu_validate.py --out docs/gpu-validation.md            # the standard set
    python benchmarks/gpu_validate.py --quick --out /tmp/v.md                 # 4 configs, a minute
    python benchmarks/gpu_validate.py --big --out docs/gpu-validation.md      # + opt-1.3b b8 s512 bf16

For each config (model, method, dtype, attention, batch, sequence) it profiles one training step
twice, on `cuda` (real tensors + caching allocator) and on `fake` (CPU kernels, no memory), and
writes one markdown table row:

- ledger cuda / ledger fake: bytes saved for backward at the end of forward (the ledger's
  `activation_bytes`) on the GPU and as predicted without one; `fake/cuda` is their ratio. They
  differ where GPU kernels differ from CPU ones (flash/mem-efficient SDPA saves a logsumexp
  instead of the s x s matrix, dropout masks are bool), see docs/profiling.md.
- kept after fwd: what the allocator holds at the end of forward beyond what it held before
  the step (saved tensors + logits/loss + autocast weight copies; block rounding included).
- paper act.: the MEFT paper's activation memory, max_memory_allocated() over the step minus
  memory_allocated() after it.
- live peak cuda / fake: the live tracker's peak of activations + temporaries over forward and
  backward (`peak_activation_bytes`).

Without CUDA it prints one line and exits 2. Exit 1 if any config failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import sys
import time
import traceback

MiB = 2**20


@dataclasses.dataclass(frozen=True)
class Config:
    model: str
    method: str
    dtype: str
    attn: str
    batch_size: int
    seq_len: int

    @property
    def label(self) -> str:
        return f"{self.model} {self.method} {self.dtype} {self.attn} b{self.batch_size} s{self.seq_len}"


def standard_configs(quick: bool = False, big: bool = False) -> list[Config]:
    if quick:
        return [Config("opt-125m", "full", "bf16", "sdpa", 4, 256), Config("opt-125m", "lora", "bf16", "eager", 4, 256),
                Config("bert-base", "full", "fp32", "sdpa", 4, 256), Config("bert-base", "lora", "fp32", "eager", 4, 256)]
    out = []
    for model in ("opt-125m", "bert-base"):
        for dtype in ("bf16", "fp32"):
            for attn in ("sdpa", "eager"):
                for method in ("full", "lora"):
                    for b, s in ((4, 128), (8, 512)):
                        out.append(Config(model, method, dtype, attn, b, s))
    if big:
        out += [Config("opt-1.3b", m, "bf16", "sdpa", 8, 512) for m in ("full", "lora")]
    return out


def measure(cfg: Config) -> dict:
    """Profile `cfg` on cuda and on fake; the figures of one table row."""
    import gc

    import torch

    from membench import profile

    kw = dict(batch_size=cfg.batch_size, seq_len=cfg.seq_len, dtype=cfg.dtype, attn=cfg.attn)
    t0 = time.perf_counter()
    cuda = profile(cfg.model, cfg.method, device="cuda", **kw)
    t1 = time.perf_counter()
    gc.collect()
    torch.cuda.empty_cache()
    fake = profile(cfg.model, cfg.method, device="fake", **kw)
    t2 = time.perf_counter()
    c = cuda.cuda
    fwd = c["phases"]["forward"]
    layers_equal = sum(1 for name, v in cuda.layer_bytes.items() if fake.layer_bytes.get(name) == v)
    return {
        "config": dataclasses.asdict(cfg),
        "ledger_cuda": cuda.activation_bytes,
        "ledger_fake": fake.activation_bytes,
        "kept_after_forward": fwd["end_allocated_bytes"] - c["start_allocated_bytes"],
        "paper_activation": c["paper_activation_bytes"],
        "max_allocated": c["max_allocated_bytes"],
        "live_peak_cuda": cuda.peak_activation_bytes,
        "live_peak_fake": fake.peak_activation_bytes,
        "weight_copy_cuda": cuda.weight_copy_bytes,
        "layers_equal": layers_equal,
        "layers": len(cuda.layer_bytes),
        "estimated_peak_fake": fake.estimated_peak_bytes,
        "nvml_peak_used": cuda.nvml.get("peak_used_bytes") if cuda.nvml.get("available") else None,
        "wall_cuda_s": round(t1 - t0, 2),
        "wall_fake_s": round(t2 - t1, 2),
    }


def _mib(n) -> str:
    return "-" if n is None else f"{n / MiB:,.1f}"


def _ratio(a, b) -> str:
    return "-" if not b or a is None else f"{a / b:.3f}"


COLUMNS = ["config", "ledger cuda (MiB)", "ledger fake (MiB)", "fake/cuda", "equal layers",
           "kept after fwd (MiB)", "paper act. (MiB)", "live peak cuda (MiB)", "live peak fake (MiB)",
           "peak fake/paper"]


def row_cells(r: dict) -> list[str]:
    label = Config(**r["config"]).label
    if "error" in r:
        return [label, f"failed: {r['error']}"] + [""] * (len(COLUMNS) - 2)
    return [label, _mib(r["ledger_cuda"]), _mib(r["ledger_fake"]), _ratio(r["ledger_fake"], r["ledger_cuda"]),
            f"{r['layers_equal']}/{r['layers']}", _mib(r["kept_after_forward"]), _mib(r["paper_activation"]),
            _mib(r["live_peak_cuda"]), _mib(r["live_peak_fake"]), _ratio(r["live_peak_fake"], r["paper_activation"])]


def to_markdown(rows: list[dict], meta: dict) -> str:
    """The report: a header with where the numbers came from, then one table row per config."""
    lines = ["# GPU validation of the profilers", ""]
    lines += [f"Generated by `{meta.get('command', 'python benchmarks/gpu_validate.py')}` on "
              f"{meta.get('device_name', '?')} ({meta.get('date', '?')}); torch {meta.get('torch', '?')}, "
              f"CUDA {meta.get('cuda', '?')}, transformers {meta.get('transformers', '?')}, peft "
              f"{meta.get('peft', '?')}, membench {meta.get('git_revision') or meta.get('membench', '?')}.", ""]
    lines += ["Columns: bytes saved for backward at the end of forward by the ledger on the GPU and as "
              "predicted with fake tensors (CPU kernels); how many report rows (layers) agree to the byte; "
              "what the allocator keeps at the end of forward beyond the step's start; the paper's "
              "activation memory (peak allocated minus allocated after the step); the live tracker's "
              "peak of activations + temporaries over forward and backward, on the GPU and predicted.", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|")
    for r in rows:
        cells = row_cells(r)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    ok = [r for r in rows if "error" not in r]
    if ok:
        exact = sum(1 for r in ok if r["ledger_fake"] == r["ledger_cuda"])
        lines += ["", f"{len(ok)} configs measured, {len(rows) - len(ok)} failed; the fake prediction of the "
                      f"saved bytes is exact in {exact} of {len(ok)}."]
    return "\n".join(lines) + "\n"


def metadata(argv: list[str]) -> dict:
    import torch

    from membench.provenance import provenance

    prov = provenance("cuda")
    return {"command": "python benchmarks/gpu_validate.py " + " ".join(argv), "device_name": prov["device_name"],
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": prov["transformers"], "peft": prov["peft"],
            "membench": prov["membench"], "git_revision": prov["git_revision"]}


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/gpu-validation.md", help="markdown file to write")
    p.add_argument("--json", default=None, help="also write the raw figures as JSON here")
    p.add_argument("--quick", action="store_true", help="4 configs instead of 32")
    p.add_argument("--big", action="store_true", help="add opt-1.3b b8 s512 bf16 full and lora")
    p.add_argument("--limit", type=int, default=0, help="run only the first N configs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: gpu_validate needs a CUDA GPU (torch.cuda.is_available() is False); nothing was written",
              file=sys.stderr)
        return 2
    configs = standard_configs(quick=args.quick, big=args.big)
    if args.limit > 0:
        configs = configs[: args.limit]
    rows = []
    for i, cfg in enumerate(configs, 1):
        print(f"[{i}/{len(configs)}] {cfg.label}", file=sys.stderr, flush=True)
        try:
            rows.append(measure(cfg))
        except Exception as exc:  # one failing config must not lose the others
            traceback.print_exc()
            rows.append({"config": dataclasses.asdict(cfg), "error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
    text = to_markdown(rows, metadata(argv))
    with open(args.out, "w") as f:
        f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": metadata(argv), "rows": rows}, f, indent=2)
    print(text)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
