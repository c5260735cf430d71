"""A small results database for report tests: real profiled runs of tiny models, plus train/verify rows."""

from __future__ import annotations

import math
from pathlib import Path

from membench.backbones.tiny import tiny_overrides

METHODS = ("full", "lora", "bitfit")


def build_fixture_db(path: Path) -> Path:
    from membench import profile
    from membench.methods import names
    from membench.result import RunRecord
    from membench.results import config_of, store_result

    methods = [m for m in METHODS if m in names()]
    ov = tiny_overrides("bert")
    results = {}
    for method in methods:
        for b, s in ((2, 16), (2, 32), (4, 32)):  # two sequence lengths at b2, two batch sizes at s32
            r = profile("bert-base", method, batch_size=b, seq_len=s, device="fake", overrides=ov)
            store_result(path, RunRecord(result=r))
            results[(method, b, s)] = r
    # training runs: memory from a real profiled step, accuracy/curves as a training run stores them
    for i, method in enumerate(methods):
        r = results[(method, 4, 32)]
        acc = 0.70 + 0.04 * i if method != "bitfit" else 0.62  # bitfit: less memory than full, lower accuracy
        steps = 30
        series = {"train_loss": [(k, 0.7 * math.exp(-k / (10 + 5 * i)) + 0.2) for k in range(steps)],
                  "val_accuracy": [(1, acc - 0.03), (2, acc - 0.01)]}
        metrics = {"accuracy": acc, "val_accuracy": acc - 0.01, "majority_accuracy": 0.58,
                   "step_time_s": 0.05 + 0.02 * i, "epochs_run": 2, "n_train": 64}
        cfg = config_of(r) | {"task": "rotten_tomatoes", "kind": "train", "lr": 1e-3, "epochs": 2}
        store_result(path, RunRecord(result=r, kind="train", metrics=metrics, series=series, config=cfg))
    # a verify run with per-layer error series (names as any verifier may call them)
    store_result(path, RunRecord(kind="verify", metrics={"max_recon_error": 3e-4},
                                 series={"recon_error": [(k, 1e-7 * 10 ** k) for k in range(4)],
                                         "grad_error": [(k, 1e-6 * 5 ** k) for k in range(4)]},
                                 config={"model": "bert-base", "method": "meft1", "batch_size": 2, "seq_len": 32,
                                         "dtype": "fp32", "device": "cpu", "overrides": ov}))
    store_result(path, RunRecord(status="oom", error="CUDA out of memory (fixture)",
                                 config={"model": "bert-base", "method": "full", "batch_size": 64, "seq_len": 512,
                                         "dtype": "fp32", "device": "cuda"}))
    return path
