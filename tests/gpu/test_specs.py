"""The GPU table (membench.gpu.specs): a real device's name finds its row by the row's own pattern, so a new row
is matched without a second list, and same-model rows are told apart by compute capability and memory."""

from __future__ import annotations

import pytest

from membench.gpu import specs

GiB = 2**30


@pytest.mark.parametrize("gpu", list(specs.GPUS.values()), ids=list(specs.GPUS))
def test_every_row_matches_its_own_label(gpu):
    assert specs.match_device_name(gpu.label, gpu.memory_bytes, (gpu.major, gpu.minor)) is gpu
    assert specs.match_device_name(gpu.label, gpu.memory_bytes) is gpu
    # no other model's pattern finds this label: only rows of the same model (other sizes) compete
    assert {g.pattern for g in specs.GPUS.values() if g.names_device(gpu.label)} == {gpu.pattern}


@pytest.mark.parametrize(("device_name", "memory", "expected"), [
    ("NVIDIA A100-SXM4-80GB", 80 * GiB, "a100-80gb"),
    ("NVIDIA A100-SXM4-40GB", 40 * GiB, "a100-40gb"),
    ("NVIDIA A100 80GB PCIe", 80 * GiB, "a100-80gb"),
    ("NVIDIA H100 80GB HBM3", 80 * GiB, "h100-80gb"),
    ("NVIDIA H100 PCIe", 80 * GiB, "h100-80gb"),
    ("NVIDIA H200", 141 * GiB, "h200-141gb"),
    ("Tesla V100-SXM2-16GB", 16 * GiB, "v100-32gb"),  # the one V100 row, whatever its size
    ("Tesla V100S-PCIE-32GB", 32 * GiB, "v100-32gb"),
    ("NVIDIA GeForce RTX 4090", 24 * GiB, "rtx4090-24gb"),
    ("NVIDIA GeForce RTX 3090", 24 * GiB, "rtx3090-24gb"),
    ("NVIDIA A10G", 23 * GiB, "a10g-24gb"),
    ("NVIDIA L4", 23 * GiB, "l4-24gb"),
    ("NVIDIA RTX A6000", 48 * GiB, "a6000-48gb"),
])
def test_real_device_names_find_their_row(device_name, memory, expected):
    assert specs.match_device_name(device_name, memory).name == expected


@pytest.mark.parametrize("device_name", ["NVIDIA L40S", "NVIDIA L40", "NVIDIA A10", "NVIDIA RTX 6000 Ada Generation",
                                         "NVIDIA GeForce RTX 4080", "NVIDIA B200"])
def test_other_devices_match_no_row(device_name):
    """The L40S is not an L4, the A10 not an A10G: a device the table lacks gets a spec of its own."""
    assert specs.match_device_name(device_name, 48 * GiB) is None


def test_same_model_rows_are_told_apart_by_memory_then_capability():
    assert specs.match_device_name("NVIDIA A100-PCIE-40GB", 39 * GiB).name == "a100-40gb"
    assert specs.match_device_name("NVIDIA A100-PCIE-40GB", 79 * GiB).name == "a100-80gb"
    assert specs.match_device_name("NVIDIA A100-SXM4-80GB").name == "a100-80gb"  # no memory: the largest
    assert specs.match_device_name("NVIDIA A100-SXM4-80GB", 80 * GiB, (8, 0)).name == "a100-80gb"
    assert specs.match_device_name("NVIDIA A100-SXM4-80GB", 80 * GiB, (9, 0)) is None  # not an A100 after all


def test_a_new_row_is_matched_without_another_list(monkeypatch):
    row = specs._gpu("b200-180gb", "NVIDIA B200", r"\bb200\b", (10, 0), 183_359, 600, 148, cudnn=True)
    monkeypatch.setitem(specs.GPUS, row.name, row)
    assert specs.match_device_name("NVIDIA B200", 179 * GiB, (10, 0)) is row
    assert specs.match_device_name("NVIDIA H200", 141 * GiB).name == "h200-141gb"
