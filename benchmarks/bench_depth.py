"""What a deep model's profile costs now that it is extrapolated from shallow copies (issue 22), each in a fresh
process, imports included and timed apart:

    pytest benchmarks/bench_depth.py -s

Targets, printed next to each figure, and asserted (2 cores):
- `membench run -m llama-2-7b --method lora -b 8 -s 512 --dtype bf16`: the whole command under 10 s;
- llama-2-70b lora b1 s4096: under 12 s;
- the profile time (the result's wall_s) of llama-2-70b's 80 layers over its 8 layers: at most 1.2x;
- peak RSS under 1 GiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "120"}

# the whole command, as a user types it
COMMANDS = {
    "llama-2-7b lora b8 s512 bf16": (["-m", "llama-2-7b", "--method", "lora", "-b", "8", "-s", "512", "--dtype",
                                      "bf16"], 10.0),
    "llama-2-70b lora b1 s4096 bf16": (["-m", "llama-2-70b", "--method", "lora", "-b", "1", "-s", "4096", "--dtype",
                                        "bf16"], 12.0),
}


def _command(args: list[str], out) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "membench", "run", *args, "--device", "fake",
                           "--out", str(out)], capture_output=True, text=True, env=ENV, timeout=600)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    return {"wall_s": wall, "profile_s": result["wall_s"], "extrapolation": result["provenance"]["extrapolation"]}


IMPORTS = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"


def _import_s(modules: str) -> float:
    """Seconds a fresh process takes to import `modules` (the interpreter's own start left out)."""
    proc = subprocess.run([sys.executable, "-c", IMPORTS.format(modules)], capture_output=True, text=True, env=ENV,
                          timeout=300)
    return float(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_whole_command(benchmark, name, tmp_path):
    args, target = COMMANDS[name]
    figures = {}
    benchmark.pedantic(lambda: figures.update(_command(args, tmp_path / "r.json")), rounds=1, iterations=1)
    figures["import_s"] = {m: _import_s(m) for m in ("membench.cli", "torch, transformers, peft")}
    benchmark.extra_info.update(figures)
    ok = figures["wall_s"] < target
    imports = ", ".join(f"{k} {v:.1f} s" for k, v in figures["import_s"].items())
    print(f"\nmembench run {name} --device fake: {figures['wall_s']:.1f} s wall (the profile {figures['profile_s']:.1f} "
          f"s; in a fresh process, import {imports}); target < {target:.0f} s: {'OK' if ok else 'MISSED'}; "
          f"{figures['extrapolation']}")
    assert ok


CHILD = r"""
import json, sys, time
from membench import profile
out = {}
for layers in (8, 80, 8, 80):  # the second of each: warm (imports and first-call costs paid)
    r = profile("llama-2-70b", "lora", batch_size=1, seq_len=4096, dtype="bf16", device="fake",
                overrides={"num_hidden_layers": layers})
    out[layers] = {"wall_s": r.wall_s, "extrapolated": r.provenance["extrapolated"],
                   "reserved": r.predicted_cuda.max_reserved_bytes}
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")]
out["rss_gib"] = hwm[0] / 2**20
print(json.dumps(out))
"""


@pytest.mark.slow
def test_profile_time_does_not_grow_with_depth(benchmark):
    figures = {}

    def run():
        proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=ENV, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        figures.update(json.loads(proc.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, iterations=1)
    deep, shallow = figures["80"], figures["8"]
    ratio = deep["wall_s"] / shallow["wall_s"]
    benchmark.extra_info.update({"ratio": ratio, **figures})
    ok, ok_rss = ratio <= 1.2, figures["rss_gib"] < 1.0
    print(f"\nllama-2-70b lora b1 s4096, profile time: 80 layers {deep['wall_s']:.2f} s (extrapolated: "
          f"{deep['extrapolated']}) over 8 layers {shallow['wall_s']:.2f} s (extrapolated: {shallow['extrapolated']}) "
          f"= {ratio:.2f}x (target <= 1.2x: {'OK' if ok else 'MISSED'}); peak RSS {figures['rss_gib'] * 1024:.0f} MiB "
          f"(target < 1 GiB: {'OK' if ok_rss else 'MISSED'})")
    assert ok and ok_rss
