"""What profiling costs: hook overhead on a CPU step, and big models under fake tensors.

    pytest benchmarks/bench_profiler.py -s            # every figure is printed (-s shows it)
    pytest benchmarks/bench_profiler.py -s -m "not slow"   # overhead only

Targets (issue 2), printed next to each figure, and asserted:
- the profiler's hooks (saved-tensor ledger: saved-tensor + module hooks) add < 15% to a CPU
  training step of a small model; the live-memory tracker (a TorchDispatchMode: Python runs
  for every op) is measured apart, ledger + tracker, and reported (not asserted);
- opt-1.3b b8 s512 bf16 full fine-tuning profiled under fake tensors: < 20 s wall and < 1 GiB
  peak RSS for the whole fresh process (interpreter, imports and all); llama-2-7b: < 60 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

# ---- hook overhead on a small CPU model ---------------------------------------------------------

# opt-125m's architecture shrunk (membench.backbones.tiny.tiny_overrides); "small" is the target's
# model, "medium" shows how the fixed cost per op shrinks as ops grow
SIZES = {
    "small": {"shape": {"layers": 4, "hidden": 128, "heads": 4}, "batch_size": 4, "seq_len": 128},
    "medium": {"shape": {"layers": 4, "hidden": 512, "heads": 8}, "batch_size": 4, "seq_len": 256},
}
OVERHEAD_TARGET = 0.15
ROUNDS = int(os.environ.get("MEMBENCH_BENCH_ROUNDS", "7"))


def build_small(size: str):
    import torch

    from membench.backbones.tiny import tiny_overrides
    from membench.runner import build
    from membench.spec import RunSpec

    spec = SIZES[size]
    built = build(RunSpec(model="opt-125m", device="cpu", overrides=tiny_overrides("opt", **spec["shape"])),
                  inputs=False)
    model, family, config = built.model, built.family, built.config
    batch = family.make_batch(config, spec["batch_size"], spec["seq_len"], torch.Generator().manual_seed(0))
    return model, batch


@pytest.fixture(scope="module")
def small():
    return build_small("small")


def bare_step(model, batch):
    """What profile_step runs, without any profiler: new AdamW, forward, loss, backward, step."""
    import torch

    from membench.profilers import default_loss

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss = default_loss(model(**batch))
    loss.backward()
    opt.step()
    float(loss.detach())
    opt.zero_grad(set_to_none=True)


def variants(model, batch):
    from membench.profilers import StepPlan, profile_step

    return {
        "bare": lambda: bare_step(model, batch),
        "ledger": lambda: profile_step(model, batch, StepPlan(track_live=False)),
        "ledger+live": lambda: profile_step(model, batch),
    }


@pytest.mark.parametrize("variant", ["bare", "ledger", "ledger+live"])
def test_step_time(benchmark, small, variant):
    model, batch = small
    fn = variants(model, batch)[variant]
    benchmark.extra_info.update({"variant": variant, "model": "opt-125m", **SIZES["small"]})
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1)


def measure_overhead(size: str, rounds: int = ROUNDS) -> dict:
    """Interleaved rounds (bare, ledger, ledger+live, bare, ...) on one thread; per variant the CPU
    time (time.process_time) and wall time of the fastest round, and the overheads over `bare`.
    CPU time is the figure: on a shared, oversubscribed machine wall time of a multi-threaded step
    varies several-fold from round to round, CPU time of a single-threaded step does not, and the
    hooks' cost is CPU work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, batch = build_small(size)
        fns = variants(model, batch)
        for fn in fns.values():  # warm up (first calls build kernels and caches)
            fn()
        cpu: dict[str, list[float]] = {k: [] for k in fns}
        wall: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                c0, w0 = time.process_time(), time.perf_counter()
                fn()
                cpu[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - w0)
    finally:
        torch.set_num_threads(threads)
    best = {k: min(v) for k, v in cpu.items()}
    wbest = {k: min(v) for k, v in wall.items()}
    return {"size": size, **SIZES[size], "rounds": rounds, "cpu_s": best, "wall_s": wbest,
            "overhead": {k: best[k] / best["bare"] - 1 for k in fns},
            "wall_overhead": {k: wbest[k] / wbest["bare"] - 1 for k in fns}}


@pytest.mark.parametrize("size", sorted(SIZES, reverse=True))
def test_overhead_against_bare_step(size):
    """The hooks' cost on a small CPU step (measure_overhead): asserted on CPU time, wall time printed."""
    m = measure_overhead(size)
    over, best, wbest = m["overhead"], m["cpu_s"], m["wall_s"]
    spec = SIZES[size]
    print(f"\nprofiler overhead, {size}: opt-125m shrunk to {spec['shape']['layers']} layers x "
          f"{spec['shape']['hidden']} (b{spec['batch_size']} s{spec['seq_len']} fp32 full, cpu, 1 thread, "
          f"best of {ROUNDS} interleaved rounds)")
    for k in best:
        print(f"  {k:12s} cpu {best[k] * 1e3:8.1f} ms ({100 * over[k]:+6.1f}%)   wall {wbest[k] * 1e3:8.1f} ms "
              f"({100 * m['wall_overhead'][k]:+6.1f}%)")
    verdict = "OK" if over["ledger"] < OVERHEAD_TARGET else "MISSED"
    print(f"  target: the hooks (ledger) add < {100 * OVERHEAD_TARGET:.0f}%: {verdict} ({100 * over['ledger']:+.1f}%); "
          f"ledger + live tracker: {100 * over['ledger+live']:+.1f}% "
          f"({'within' if over['ledger+live'] < OVERHEAD_TARGET else 'over'} the same target; "
          "profile_step(track_live=False) / profile(track_live=False) skips the tracker)")
    assert over["ledger"] < OVERHEAD_TARGET


# ---- big models under fake tensors, each in a fresh process --------------------------------------

BIG = {
    "opt-1.3b": {"wall_s": 20.0, "rss_gib": 1.0},
    "llama-2-7b": {"wall_s": 60.0, "rss_gib": None},
}

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch, transformers  # the imports, timed apart (membench imports them lazily)
from membench import profile
t1 = time.perf_counter()
r = profile(sys.argv[1], sys.argv[2], batch_size=int(sys.argv[3]), seq_len=int(sys.argv[4]),
            dtype=sys.argv[5] or None, precision=sys.argv[6] or None, device="fake", **json.loads(sys.argv[7]))
t2 = time.perf_counter()
# VmHWM: this process image's peak RSS (ru_maxrss would include the parent's, inherited at fork)
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")]
print(json.dumps({"import_s": t1 - t0, "profile_s": t2 - t1,
                  "maxrss_kib": hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "activation_bytes": r.activation_bytes, "peak_activation_bytes": r.peak_activation_bytes,
                  "estimated_peak_bytes": r.estimated_peak_bytes}))
"""


def profile_in_fresh_process(model, method="full", batch_size=8, seq_len=512, dtype="bf16", precision=None,
                             **options) -> dict:
    """One profile in a new Python process (its imports included). `precision`: e.g. bf16-mixed (then `dtype`
    None: the precision's weights); `options`: more run options (quant=...)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, model, method, str(batch_size), str(seq_len), dtype or "",
                           precision or "", json.dumps(options)],
                          capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    # CPU time of the child (user + sys): close to the wall time an idle machine would show
    out["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out["rss_gib"] = out["maxrss_kib"] / 2**20
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("model", "precision"), [*((m, None) for m in sorted(BIG)), ("opt-1.3b", "bf16-mixed")])
def test_big_model_under_fake_tensors(benchmark, model, precision):
    """b8 s512 full fine-tuning in bf16 (bf16-true), and opt-1.3b in bf16-mixed: the same targets (issue 20)."""
    target = BIG[model]
    figures = {}

    def run():
        figures.update(profile_in_fresh_process(model, dtype=None if precision else "bf16", precision=precision))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({k: figures[k] for k in ("wall_s", "cpu_s", "import_s", "profile_s", "rss_gib",
                                                          "activation_bytes", "peak_activation_bytes")})
    ok_wall = figures["wall_s"] < target["wall_s"]
    ok_rss = target["rss_gib"] is None or figures["rss_gib"] < target["rss_gib"]
    print(f"\n{model} b8 s512 {precision or 'bf16'} full, fake tensors, fresh process: wall {figures['wall_s']:.1f} s "
          f"(cpu {figures['cpu_s']:.1f} s; imports {figures['import_s']:.1f} s, profile {figures['profile_s']:.1f} s; "
          f"target < "
          f"{target['wall_s']:.0f} s: {'OK' if ok_wall else 'MISSED'}), peak RSS {figures['rss_gib'] * 1024:.0f} MiB"
          + (f" (target < {target['rss_gib']:.0f} GiB: {'OK' if ok_rss else 'MISSED'})" if target["rss_gib"] else "")
          + f"; saved activations {figures['activation_bytes'] / 2**30:.2f} GiB, peak "
          f"{figures['peak_activation_bytes'] / 2**30:.2f} GiB")
    assert ok_wall and ok_rss


QLORA = {"quant": "nf4", "quant_double_quant": True}


@pytest.mark.slow
def test_qlora_llama_2_7b_under_fake_tensors(benchmark):
    """llama-2-7b QLoRA (nf4, double quantization, peft's checkpointing) b1 s512 on fake tensors, target CUDA: the
    whole process under 25 s on 2 cores (issue 21)."""
    figures = {}

    def run():
        figures.update(profile_in_fresh_process("llama-2-7b", "lora", batch_size=1, seq_len=512, **QLORA))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({k: figures[k] for k in ("wall_s", "cpu_s", "import_s", "profile_s", "rss_gib")})
    ok = figures["wall_s"] < 25.0
    print(f"\nllama-2-7b QLoRA nf4+dq b1 s512, fake tensors, fresh process: wall {figures['wall_s']:.1f} s (cpu "
          f"{figures['cpu_s']:.1f} s; imports {figures['import_s']:.1f} s, profile {figures['profile_s']:.1f} s; "
          f"target < 25 s: {'OK' if ok else 'MISSED'}), peak RSS {figures['rss_gib'] * 1024:.0f} MiB")
    assert ok
