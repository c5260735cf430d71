"""The CUDA context a prediction adds for nvidia-smi: the GPU table's typical figure, --context, or measured."""

from __future__ import annotations

import types

import pytest
import torch

from membench import profile
from membench.backbones.tiny import tiny_overrides
from membench.backends import target_for as resolve
from membench.errors import UserError
from membench.gpu import specs

MiB = 2**20
TINY = dict(batch_size=2, seq_len=16, overrides=tiny_overrides("bert"), device="fake")


def test_a_given_context_replaces_the_tables_and_is_not_approximate():
    table = profile("bert-base", "lora", gpu="v100-32gb", **TINY).predicted_cuda
    given = profile("bert-base", "lora", gpu="v100-32gb", context="1343MiB", **TINY).predicted_cuda
    assert table["context_bytes"] == specs.get("v100-32gb").context_bytes
    assert table["context_source"].startswith("GPU table") and "context_bytes" in table["approximate"]
    assert given["context_bytes"] == 1343 * MiB and given["context_source"] == "given (--context)"
    assert "context_bytes" not in given["approximate"]
    assert given["nvidia_smi_bytes"] == given["max_reserved_bytes"] + 1343 * MiB
    assert given["max_reserved_bytes"] == table["max_reserved_bytes"]  # the allocator's figures are untouched


@pytest.mark.parametrize("device, target, why", [("cpu", None, "the CPU target has none"),
                                                 ("fake", "cpu", "the CPU target has none")])
def test_context_is_refused_where_nothing_adds_it(device, target, why):
    with pytest.raises(UserError, match=why):
        resolve(device, target, context="1GiB")


def test_a_bad_context_size_is_one_line():
    with pytest.raises(UserError, match="expected a size"):
        resolve("fake", context="lots")


def test_run_fit_and_sweep_take_context(cli, tmp_path):
    code, out, _ = cli("run", "-m", "bert-base", "--method", "lora", "-b", "2", "-s", "16", "--override",
                       "num_hidden_layers=1", "--context", "1343MiB")
    assert code == 0 and "1.31 GiB (given (--context))" in out
    code, _, err = cli("run", "-m", "bert-base", "--method", "lora", "--device", "cpu", "--context", "1GiB")
    assert code == 2 and "--context" in err
    code, _, err = cli("sweep", "--models", "bert-base", "--methods", "lora", "--device", "cpu", "--context",
                       "1GiB", "--dry-run", "--db", str(tmp_path / "x.db"))
    assert code == 2 and "--context" in err


def test_fit_budgets_with_the_given_context():
    from membench.fit import budget

    limit, table = budget("v100-32gb", 0.05)
    assert table == specs.get("v100-32gb").context_bytes
    assert budget("v100-32gb", 0.05, "1343MiB") == (limit, 1343 * MiB)


def test_a_sweep_run_without_context_keeps_its_key():
    from membench.sweep.spec import RunSpec

    plain = RunSpec("bert-base", "lora", 8, 128, "fp32", "fake")
    assert plain.key() == RunSpec("bert-base", "lora", 8, 128, "fp32", "fake", context=None).key()
    assert plain.key() != RunSpec("bert-base", "lora", 8, 128, "fp32", "fake", context="1GiB").key()
    # the key of a run stored before `context` existed: its dict had no such field
    import hashlib
    import json

    from membench import __version__

    old = {k: v for k, v in plain.to_dict().items() if k not in ("image_size", "context", "grad_accum", "precision", "quant",
                                                        "quant_double_quant", "quant_blocksize", "quant_compute_dtype",
                                                        "kbit_ckpt")}
    blob = json.dumps({"spec": old, "membench": __version__}, sort_keys=True, separators=(",", ":"))
    assert plain.key() == hashlib.sha256(blob.encode()).hexdigest()[:32]


class _Process:
    def __init__(self, pid, used):
        self.pid, self.usedGpuMemory = pid, used


def _stub_nvml(monkeypatch, processes, device_used):
    import sys

    stub = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: "gpu0",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=device_used),
        nvmlDeviceGetComputeRunningProcesses=lambda h: processes)
    monkeypatch.setitem(sys.modules, "pynvml", stub)


def test_the_measured_context_is_this_process_less_the_allocators_reserved(monkeypatch):
    import os

    from membench.profilers.nvml import NvmlSampler

    _stub_nvml(monkeypatch, [_Process(1, 9000 * MiB), _Process(os.getpid(), 2000 * MiB)], 12000 * MiB)
    nvml = NvmlSampler()
    nvml.measure_context(1500 * MiB)
    summary = nvml.summary()
    assert summary["context_bytes"] == 500 * MiB and summary["context_source"] == "process"


def test_without_per_process_figures_the_device_is_read_and_said_so(monkeypatch):
    from membench.profilers.nvml import NvmlSampler

    _stub_nvml(monkeypatch, [], 2000 * MiB)
    nvml = NvmlSampler()
    nvml.measure_context(1500 * MiB)
    assert nvml.summary()["context_bytes"] == 500 * MiB
    assert "other processes" in nvml.summary()["context_source"]


@pytest.mark.gpu
def test_on_a_gpu_the_context_is_measured():
    r = profile("bert-base", "lora", batch_size=2, seq_len=16, overrides=tiny_overrides("bert"), device="cuda")
    p = r.predicted_cuda
    assert p["context_source"].startswith("measured")
    assert 50 * MiB < p["context_bytes"] < 4096 * MiB
    assert p["nvidia_smi_bytes"] == p["max_reserved_bytes"] + p["context_bytes"]
    assert torch.cuda.is_available()
