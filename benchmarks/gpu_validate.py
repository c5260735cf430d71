"""Check the CUDA predictions against a real GPU: SDPA choice, saved tensors, allocator, NVML.

    python benchmarks/gpu_validate.py --out docs/gpu-validation.md --json v.json   # the grid, < 8 min
    python benchmarks/gpu_validate.py --quick --out /tmp/v.md                     # 4 configs
    bash benchmarks/gpu_session.sh                                                # on a lent device

The grid: bert-base and opt-125m x full / lora / meft1 / meft3 x fp32 / bf16 x eager / sdpa
x batch 2 and 8 at sequence 512 (64 configs; `--big` adds opt-1.3b bf16 sdpa b8). For each:

    on the GPU     profile(device="cuda"): the ledger of real CUDA kernels, the caching
                   allocator's statistics over two training steps, NVML's device usage,
                   and per SDPA call the backend torch picks (`torch._fused_sdp_choice`)
                   beside the one membench.gpu.sdpa picks for the same call
    without it     profile(device="fake", target="cuda", gpu=<this GPU>): fake tensors, CUDA
                   kernels routed, allocations replayed through the allocator model; run in
                   worker processes (no CUDA in them) while the GPU works

and compares: SDPA choices (goal: all equal), the per-layer ledger (goal: byte-equal),
max_memory_allocated (goal: within 1%), max_memory_reserved (goal: within 3%), NVML
used at the peak (approximate: the context). The "replay" columns replay the GPU run's
own allocation trace through the allocator model: they separate the allocator model's
error from the kernel emulation's.

Without CUDA it prints one line and exits 2. Exit 1 if any config failed to run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.util
import json
import os
import sys
import time
import traceback

from membench.units import mib

MiB = 2**20
GOALS = {"allocated": 0.01, "reserved": 0.03, "nvml": 0.05}  # relative error allowed


@dataclasses.dataclass(frozen=True)
class Config:
    model: str
    method: str
    dtype: str
    attn: str
    batch_size: int
    seq_len: int
    quant: str = ""  # a quantized base (QLoRA: nf4, nf4+dq), peft's checkpointing off

    @property
    def label(self) -> str:
        base = f" {self.quant} base" if self.quant else ""
        return f"{self.model} {self.method} {self.dtype}{base} {self.attn} b{self.batch_size} s{self.seq_len}"

    def kwargs(self) -> dict:
        kw = {"batch_size": self.batch_size, "seq_len": self.seq_len, "dtype": self.dtype, "attn": self.attn}
        if self.quant:
            kw.update(quant=self.quant.split("+")[0], quant_double_quant=self.quant.endswith("+dq"), kbit_ckpt=False)
        return kw


def standard_configs(quick: bool = False, big: bool = False) -> list[Config]:
    if quick:
        return [Config("opt-125m", "full", "bf16", "sdpa", 4, 256), Config("opt-125m", "meft3", "bf16", "eager", 4, 256),
                Config("bert-base", "lora", "fp32", "sdpa", 4, 256), Config("bert-base", "meft1", "fp32", "eager", 4, 256)]
    out = [Config(model, method, dtype, attn, b, 512)
           for model in ("bert-base", "opt-125m") for method in ("full", "lora", "meft1", "meft3")
           for dtype in ("fp32", "bf16") for attn in ("eager", "sdpa") for b in (2, 8)]
    # QLoRA: bitsandbytes' fused 4-bit kernel (few rows) and its dequantize fallback (> 1536 rows), MEFT on nf4
    out += [Config("opt-125m", m, "bf16", "sdpa", b, s, q) for m, b, s, q in
            (("lora", 2, 256, "nf4"), ("lora", 8, 512, "nf4+dq"), ("meft3", 8, 512, "nf4"))]
    if big:
        out += [Config("opt-1.3b", m, "bf16", "sdpa", 8, 512) for m in ("full", "lora", "meft3")]
    return out


# ---- the GPU side -------------------------------------------------------------------------------------------
def sdpa_observer(spec):
    """A torch function mode recording, per SDPA call, (torch's backend, membench's backend)."""
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    from membench.gpu.emulation import describe_sdpa, enabled_backends
    from membench.gpu.sdpa import SdpaEnv, choose_backend

    names = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn"}

    class Observer(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls: list[tuple[str, str]] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.scaled_dot_product_attention:
                self.calls.append((torch_choice(*args, **kwargs), ours(*args, **kwargs)))
            return func(*args, **kwargs)

    def torch_choice(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        import torch

        kw = {"scale": scale, "enable_gqa": enable_gqa}
        try:
            code = torch._fused_sdp_choice(q, k, v, attn_mask, dropout_p, is_causal, **kw)
        except TypeError:  # older torch: no enable_gqa
            code = torch._fused_sdp_choice(q, k, v, attn_mask, dropout_p, is_causal, scale=scale)
        return names.get(int(code), f"backend {int(code)}")

    def ours(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        env = SdpaEnv(spec.major, spec.minor, enabled_backends(), prefer_cudnn=spec.prefers_cudnn_sdpa)
        return choose_backend(describe_sdpa(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa), env)

    return Observer()


def fresh_gpu() -> None:
    """Drop what an earlier config left: cached segments and cuBLAS workspaces (a new process has none)."""
    import gc

    import torch

    gc.collect()
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def run_gpu(cfg: Config, spec) -> dict:
    """Profile `cfg` on the GPU; the result as a dict, and the SDPA choices seen."""
    from membench import profile

    fresh_gpu()
    observer = sdpa_observer(spec)
    with observer:
        r = profile(cfg.model, cfg.method, device="cuda", **cfg.kwargs())
    return {"result": r.to_dict(), "sdpa_calls": observer.calls}


# ---- the prediction (worker processes: no CUDA) ----------------------------------------------------------------
def _no_cuda() -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def run_fake(cfg: Config, gpu) -> dict:
    from membench import profile

    r = profile(cfg.model, cfg.method, device="fake", target="cuda", gpu=gpu, **cfg.kwargs())
    return {"result": r.to_dict()}


class Predictions:
    """Fake-tensor predictions: in `jobs` worker processes started before the GPU work, or here (jobs=0)."""

    def __init__(self, configs: list[Config], gpu, jobs: int):
        self.gpu, self.futures, self.pool = gpu, {}, None
        if jobs > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_no_cuda)
            self.futures = {cfg: self.pool.submit(run_fake, cfg, gpu) for cfg in configs}

    def get(self, cfg: Config) -> dict:
        if self.pool is None:
            return run_fake(cfg, self.gpu)
        return self.futures[cfg].result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


# ---- comparing ----------------------------------------------------------------------------------------------
def _err(measured, predicted) -> float | None:
    if not measured or predicted is None:
        return None
    return (predicted - measured) / measured


def compare(cfg: Config, gpu_run: dict, fake_run: dict, nvml_base: int | None) -> dict:
    """One row of figures from a GPU run and its prediction."""
    g, f = gpu_run["result"], fake_run["result"]
    pred, cuda = f["predicted_cuda"], g["cuda"]
    replay = g.get("predicted_cuda") or {}
    glay = {row["name"]: row["activation_bytes"] for row in g["layers"]}
    flay = {row["name"]: row["activation_bytes"] for row in f["layers"]}
    diff = {name: flay.get(name, 0) - v for name, v in glay.items() if flay.get(name) != v}
    calls = gpu_run.get("sdpa_calls", [])
    nv = g.get("nvml", {})
    nvml_used = nv.get("peak_used_bytes") - nvml_base if nv.get("available") and nvml_base is not None else None
    return {
        "config": dataclasses.asdict(cfg),
        "sdpa_calls": len(calls),
        "sdpa_agree": sum(1 for t, o in calls if t == o),
        "sdpa_torch": _count(t for t, _o in calls),
        "sdpa_ours": _count(o for _t, o in calls),
        "ledger_cuda": g["activation_bytes"], "ledger_fake": f["activation_bytes"],
        "layers": len(glay), "layers_equal": len(glay) - len(diff), "layer_diff_bytes": diff,
        "max_allocated": cuda["max_allocated_bytes"], "max_allocated_pred": pred["max_allocated_bytes"],
        "max_reserved": cuda["max_reserved_bytes"], "max_reserved_pred": pred["max_reserved_bytes"],
        "replay_allocated": replay.get("max_allocated_bytes"), "replay_reserved": replay.get("max_reserved_bytes"),
        "after_step": cuda["end_allocated_bytes"], "after_step_pred": pred["allocated_after_step_bytes"],
        "nvml_used": nvml_used, "nvml_pred": pred["nvidia_smi_bytes"],
        "phases": {name: {"measured": cuda["phases"].get(name), "predicted": pred["phases"].get(name)}
                   for name in pred["phases"]},
        "peak_activation_cuda": g["peak_activation_bytes"], "peak_activation_fake": f["peak_activation_bytes"],
    }


def _count(items) -> str:
    from collections import Counter

    return ", ".join(f"{k} x{v}" for k, v in sorted(Counter(items).items())) or "-"


def _pct(e) -> str:
    return "-" if e is None else f"{100 * e:+.2f}%"


COLUMNS = ["config", "SDPA (torch)", "SDPA agree", "equal layers", "ledger GPU (MiB)", "ledger pred. (MiB)",
           "max alloc GPU (MiB)", "pred. err", "replay err", "max reserved GPU (MiB)", "pred. err", "replay err",
           "NVML GPU (MiB)", "pred. err"]


def row_cells(r: dict) -> list[str]:
    label = Config(**r["config"]).label
    if "error" in r or "skipped" in r:
        text = f"failed: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
        return [label, text] + [""] * (len(COLUMNS) - 2)
    return [label, r["sdpa_torch"], f"{r['sdpa_agree']}/{r['sdpa_calls']}", f"{r['layers_equal']}/{r['layers']}",
            mib(r["ledger_cuda"]), mib(r["ledger_fake"]),
            mib(r["max_allocated"]), _pct(_err(r["max_allocated"], r["max_allocated_pred"])),
            _pct(_err(r["max_allocated"], r["replay_allocated"])),
            mib(r["max_reserved"]), _pct(_err(r["max_reserved"], r["max_reserved_pred"])),
            _pct(_err(r["max_reserved"], r["replay_reserved"])),
            mib(r["nvml_used"]), _pct(_err(r["nvml_used"], r["nvml_pred"]))]


def summary(rows: list[dict]) -> list[str]:
    ok = [r for r in rows if "error" not in r and "skipped" not in r]
    failed = sum(1 for r in rows if "error" in r)
    skipped = sum(1 for r in rows if "skipped" in r)
    if not ok:
        return [f"No config measured ({failed} failed, {skipped} skipped)."]

    def within(key, pred, goal):
        errs = [_err(r[key], r[pred]) for r in ok]
        return sum(1 for e in errs if e is not None and abs(e) <= goal), max(
            (abs(e) for e in errs if e is not None), default=0.0)

    calls = sum(r["sdpa_calls"] for r in ok)
    agree = sum(r["sdpa_agree"] for r in ok)
    exact = sum(1 for r in ok if r["layers_equal"] == r["layers"])
    a_in, a_max = within("max_allocated", "max_allocated_pred", GOALS["allocated"])
    r_in, r_max = within("max_reserved", "max_reserved_pred", GOALS["reserved"])
    ra_in, ra_max = within("max_allocated", "replay_allocated", GOALS["allocated"])
    rr_in, rr_max = within("max_reserved", "replay_reserved", GOALS["reserved"])
    nv = [r for r in ok if r["nvml_used"] is not None]
    n_in, n_max = within("nvml_used", "nvml_pred", GOALS["nvml"]) if nv else (0, 0.0)
    n = len(ok)
    return [
        f"{n} configs measured, {failed} failed, {skipped} skipped (time budget).",
        f"- SDPA backend: membench picks torch's kernel in {agree} of {calls} calls.",
        f"- Saved tensors: the per-layer ledger is byte-equal in {exact} of {n} configs.",
        f"- max_memory_allocated: within 1% in {a_in} of {n} (largest error {100 * a_max:.2f}%); "
        f"replaying the GPU's own trace: {ra_in} of {n} ({100 * ra_max:.2f}%).",
        f"- max_memory_reserved: within 3% in {r_in} of {n} (largest error {100 * r_max:.2f}%); "
        f"replaying the GPU's own trace: {rr_in} of {n} ({100 * rr_max:.2f}%).",
        f"- NVML used at the peak (approximate, the CUDA context): within 5% in {n_in} of {len(nv)} "
        f"(largest error {100 * n_max:.2f}%)." if nv else "- NVML: not available on this machine.",
    ]


def to_markdown(rows: list[dict], meta: dict) -> str:
    """The report: where the numbers came from, the summary, then one table row per config."""
    lines = ["# GPU validation of the CUDA predictions", ""]
    lines += [f"Generated by `{meta.get('command', 'python benchmarks/gpu_validate.py')}` on "
              f"{meta.get('device_name', '?')} (predicted as `{meta.get('gpu', '?')}`; {meta.get('date', '?')}); "
              f"torch {meta.get('torch', '?')}, CUDA {meta.get('cuda', '?')}, transformers "
              f"{meta.get('transformers', '?')}, peft {meta.get('peft', '?')}, membench "
              f"{meta.get('git_revision') or meta.get('membench', '?')}; {meta.get('wall_s', '?')} s.", ""]
    if meta.get("context_measured") is not None:
        lines += [f"CUDA context measured with NVML: {mib(meta['context_measured'])} MiB "
                  f"(the GPU table says ~{mib(meta.get('context_table'))} MiB).", ""]
    lines += summary(rows) + [""]
    lines += ["Columns: the SDPA kernels torch picked and how many calls membench predicted the same; report "
              "rows (layers) whose saved bytes the fake run predicts to the byte, and both totals; the "
              "allocator's peaks over two training steps on the GPU, and the error of the prediction "
              "(fake tensors, CUDA kernels routed, allocator model) and of the replay (the GPU run's own "
              "allocations through the allocator model); NVML device memory used at the peak minus before "
              "CUDA started, against reserved + the table's context. Errors are (predicted - GPU) / GPU.", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|")
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row_cells(r)) + " |")
    return "\n".join(lines) + "\n"


# ---- main ---------------------------------------------------------------------------------------------------
def metadata(argv: list[str], spec) -> dict:
    import torch

    from membench.provenance import provenance

    prov = provenance("cuda")
    return {"command": "python benchmarks/gpu_validate.py " + " ".join(argv), "device_name": prov["device_name"],
            "gpu": spec.name, "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": prov["transformers"],
            "peft": prov["peft"], "membench": prov["membench"], "git_revision": prov["git_revision"],
            "context_table": spec.context_bytes}


def start_cuda():
    """Create the CUDA context (so NVML can measure it) and return the GPU's spec (membench.gpu.specs)."""
    import torch

    from membench.runner import real_gpu_spec

    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return real_gpu_spec()


def nvml_used() -> int | None:
    from membench.profilers.nvml import NvmlSampler

    return NvmlSampler().used_bytes()


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/gpu-validation.md", help="markdown file to write")
    p.add_argument("--json", default=None, help="also write the raw figures as JSON here")
    p.add_argument("--quick", action="store_true", help="4 configs instead of 64")
    p.add_argument("--big", action="store_true", help="add opt-1.3b bf16 sdpa b8 s512 (full, lora, meft3)")
    p.add_argument("--limit", type=int, default=0, help="run only the first N configs")
    p.add_argument("--jobs", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 2)),
                   help="worker processes for the fake-tensor predictions (0: in this process)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="stop starting GPU configs after this many seconds (the rest: skipped)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    t0 = time.perf_counter()
    base = nvml_used()  # before this process starts CUDA: the device's usage without our context
    import torch

    if not torch.cuda.is_available():
        print("error: gpu_validate needs a CUDA GPU (torch.cuda.is_available() is False); nothing was written",
              file=sys.stderr)
        return 2
    configs = standard_configs(quick=args.quick, big=args.big)
    if importlib.util.find_spec("bitsandbytes") is None:  # the lent machine's image may lack it: no QLoRA rows
        print("bitsandbytes is not installed: the QLoRA configs are left out", file=sys.stderr)
        configs = [c for c in configs if not c.quant]
    if args.limit > 0:
        configs = configs[: args.limit]
    spec = start_cuda()
    meta = metadata(argv, spec)
    after_init = nvml_used()
    meta["context_measured"] = after_init - base if after_init is not None and base is not None else None
    predictions = Predictions(configs, spec, args.jobs)
    rows = []
    try:
        for i, cfg in enumerate(configs, 1):
            if time.perf_counter() - t0 > args.budget_s:
                rows.append({"config": dataclasses.asdict(cfg), "skipped": f"past --budget-s {args.budget_s:g}"})
                continue
            print(f"[{i}/{len(configs)}] {cfg.label}", file=sys.stderr, flush=True)
            try:
                gpu_run = run_gpu(cfg, spec)
                rows.append(compare(cfg, gpu_run, predictions.get(cfg), base))
            except Exception as exc:  # one failing config must not lose the others
                traceback.print_exc()
                rows.append({"config": dataclasses.asdict(cfg),
                             "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
    finally:
        predictions.close()
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    text = to_markdown(rows, meta)
    with open(args.out, "w") as f:
        f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2, default=str)
    print(text)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
