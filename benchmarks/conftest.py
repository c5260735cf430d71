"""pytest-benchmark setup for the membench suites.

- Adds the versions memory figures depend on (torch, transformers, peft), the
  CUDA version and the device name to the saved JSON's `machine_info`;
  `membench bench-compare` reads them (docs/benchmarks.md).
- `--bench-methods`, `--bench-models`, `--bench-configs`, `--bench-devices`
  narrow the suites (comma-separated; default: everything); `--bench-quick`
  times each case once (the CI memory gate).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser):
    group = parser.getgroup("membench benchmarks")
    group.addoption("--bench-methods", default="", help="comma-separated method specs (default: every "
                    "registered method, plus full/lora with each modifier)")
    group.addoption("--bench-models", default="", help="comma-separated families, e.g. opt,bert (default: all "
                    "the suite's families)")
    group.addoption("--bench-configs", default="", help="comma-separated sizes: tiny, small (default: both)")
    group.addoption("--bench-devices", default="", help="comma-separated devices: fake, cpu, cuda (default: "
                    "fake,cpu; cuda on a GPU box keeps its own baseline)")
    group.addoption("--bench-quick", action="store_true", help="time each case once, without calibration "
                    "(CI memory gate: memory figures are the same, step times are rough)")


def pytest_configure(config):
    import torch

    # transformers' deprecation noise, once per checkpointed model
    config.addinivalue_line("filterwarnings", "ignore:.*is_gradient_checkpointing.*:FutureWarning")

    # a fixed thread count: step time depends on it, and it is recorded in machine_info
    threads = int(os.environ.get("MEMBENCH_BENCH_THREADS", "0") or 0) or max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    machine_info.update({
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "membench": _version("membench"),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device_name": device_name(),
        "torch_num_threads": torch.get_num_threads(),
    })


def pytest_benchmark_update_json(config, benchmarks, output_json):
    # `membench bench-compare` does not gate step times taken once (--bench-quick)
    output_json["membench_suite"] = {"quick": bool(config.getoption("bench_quick"))}


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
