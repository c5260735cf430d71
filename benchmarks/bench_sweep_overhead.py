"""Per-run overhead of subprocess isolation in `membench sweep` (CPU, tiny models, fake backend).

    python benchmarks/bench_sweep_overhead.py [--runs 6] [--start-methods forkserver,spawn]
    pytest benchmarks/bench_sweep_overhead.py -s      (the same, as a test with the 2 s target)

For each start method it runs N tiny runs, one process each, and reports, per run:
wall time from submit to stored record, the run's own time (measured inside the
run process), and the difference: the isolation overhead (process start, imports
not done by a preloaded forkserver, result transfer). The first run is reported
apart: with forkserver it pays the one-time import of torch + transformers.
Target: under 2 s per run beyond the run itself, excluding the first import.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 2.0


def measure(start_method: str, runs: int) -> dict:
    from membench.results import load
    from membench.spec import RunSpec
    from membench.sweep import Grid, LocalExecutor, run_sweep

    specs = Grid(models=["opt-125m"], methods=["full"], seq_lens=[16], batch_sizes=list(range(1, runs + 1)),
                 dtypes=["fp32"], run=RunSpec(device="fake", tiny=True)).expand()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        ex = LocalExecutor(start_method=start_method)
        stamps: list[float] = []

        class Clock:
            def start(self, total, done):
                stamps.append(time.perf_counter())

            def advance(self, spec, status, counts):
                stamps.append(time.perf_counter())

            def finish(self):
                pass

        t0 = time.perf_counter()
        summary = run_sweep(specs, db=db, executor=ex, progress=Clock())
        total = time.perf_counter() - t0
        assert summary.counts["ok"] == runs, summary.records
        df = load(db)
    # runs are sequential: each interval between two stored records is one run, submit to store
    per_run = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    inside = [float(x) for x in df.sort_values("run_id")["wall_s"]]
    overhead = [p - i for p, i in zip(per_run, inside, strict=True)]
    return {"start_method": start_method, "runs": runs, "total_s": total, "preflight_s": stamps[0] - t0,
            "first_run_s": per_run[0], "first_overhead_s": overhead[0],
            "run_inside_s": statistics.median(inside[1:]), "per_run_s": statistics.median(per_run[1:]),
            "overhead_s": statistics.median(overhead[1:]), "overhead_max_s": max(overhead[1:])}


def report(r: dict) -> str:
    return (f"{r['start_method']:>10}: {r['runs']} runs in {r['total_s']:.1f} s (preflight incl. first start "
            f"{r['preflight_s']:.1f} s); first run {r['first_run_s']:.2f} s (overhead {r['first_overhead_s']:.2f} s); "
            f"then per run {r['per_run_s']:.2f} s = run itself {r['run_inside_s']:.2f} s + isolation overhead "
            f"{r['overhead_s']:.2f} s (median; max {r['overhead_max_s']:.2f} s; target < {TARGET_S:g} s)")


def test_sweep_isolation_overhead():
    r = measure("forkserver", 4)
    print("\n" + report(r))
    assert r["overhead_s"] < TARGET_S


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--start-methods", default="forkserver,spawn")
    args = ap.parse_args(argv)
    ok = True
    for sm in args.start_methods.split(","):
        r = measure(sm.strip(), args.runs)
        print(report(r), flush=True)
        ok &= r["overhead_s"] < TARGET_S
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
