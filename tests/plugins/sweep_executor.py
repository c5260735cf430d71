"""A cheap test executor: no subprocess, no torch; fabricates records (tests/sweep/).

`--executor sweep_executor:FakeExecutor` (with `PYTHONPATH=tests/plugins`). A run
"OOMs" when batch_size * seq_len >= MEMBENCH_FAKE_OOM_TOKENS (default: never) and
each run takes MEMBENCH_FAKE_RUN_S seconds (default 0).
"""

from __future__ import annotations

import os
import time

from membench.sweep.executors import Executor


def fake_result(spec) -> dict:
    tokens = spec.batch_size * spec.seq_len
    return {"model": spec.model, "method": spec.method, "batch_size": spec.batch_size, "seq_len": spec.seq_len,
            "dtype": spec.dtype, "device": spec.device, "attn": spec.attn, "target": spec.target, "gpu": spec.gpu,
            "optimizer": spec.optimizer, "activation_bytes": 1000 * tokens,
            "peak_activation_bytes": 1500 * tokens, "param_bytes": 10_000, "trainable_param_bytes": 10_000,
            "grad_bytes": 10_000, "optimizer_bytes": 20_000, "estimated_peak_bytes": 40_000 + 1500 * tokens,
            "layers": [{"name": "embeddings", "activation_bytes": 10 * tokens, "recompute_bytes": 0},
                       {"name": "layers.0", "activation_bytes": 990 * tokens, "recompute_bytes": 0}],
            "provenance": {"membench": "test", "device_name": "fake executor"}, "wall_s": 0.0}


class FakeExecutor(Executor):
    name = "fake"

    def __init__(self, jobs: int = 1, **_):
        self.slots = jobs
        self.oom_tokens = int(os.environ.get("MEMBENCH_FAKE_OOM_TOKENS", "0")) or None
        self.run_s = float(os.environ.get("MEMBENCH_FAKE_RUN_S", "0"))
        self.submitted = []
        self._queue = []

    def submit(self, spec, timeout):
        self.submitted.append(spec)
        self._queue.append(spec)

    def poll(self, wait_s=0.1):
        out = []
        while self._queue:
            spec = self._queue.pop(0)
            if self.run_s:
                time.sleep(self.run_s)
            if self.oom_tokens and spec.batch_size * spec.seq_len >= self.oom_tokens:
                out.append((spec, {"status": "oom", "result": None, "error": "OutOfMemoryError: fake",
                                   "wall_s": self.run_s}))
            else:
                out.append((spec, {"status": "ok", "result": fake_result(spec), "error": None,
                                   "wall_s": self.run_s}))
        return out
