"""membench.backends: what a result describes, worded by one function in the three forms its callers show."""

from __future__ import annotations

import pytest

from membench.backends import describe

GPU = "a100-80gb"
# (device, target, device name) -> (record, caption, label): the words the three callers wrote before they shared them
WORDS = {
    ("cpu", "cpu", ""): ("CPU kernels, measured", "target: CPU, measured", "cpu"),
    ("fake", "cpu", "fake (FakeTensorMode: shapes only, no memory)"): (
        "CPU kernels (fake tensors, exact)",
        "target: CPU kernels, predicted exactly with fake tensors (--target cuda for a GPU)",
        "predicted for CPU kernels (fake tensors, no memory used)"),
    ("fake", "cuda", "fake (FakeTensorMode: shapes only, no memory)"): (
        f"CUDA on {GPU}, predicted",
        f"target: CUDA on {GPU}, predicted without a GPU: saved tensors exact (CUDA kernels), allocator figures "
        "from the caching-allocator model",
        f"predicted for CUDA {GPU} (fake tensors, no memory used)"),
    ("cuda", "cuda", "NVIDIA A100-SXM4-80GB"): (
        f"CUDA on {GPU}, measured", f"target: CUDA, measured on {GPU}", "cuda (NVIDIA A100-SXM4-80GB)"),
}


@pytest.mark.parametrize("device, target, name", list(WORDS))
def test_one_function_words_every_form(device, target, name):
    gpu = GPU if target == "cuda" else None
    got = tuple(describe(device, target, gpu, name=name, form=form) for form in ("record", "caption", "label"))
    assert got == WORDS[device, target, name]


def test_runs_stored_before_targets_existed_are_described_as_cpu_kernels():
    assert describe("fake", None, form="label") == describe("fake", "", form="label") == \
        "fake (fake tensors, no memory used)"
    assert describe("fake", None, form="caption") == WORDS["fake", "cpu", "fake (FakeTensorMode: shapes only, no memory)"][1]
    assert describe("cpu", "", name="cpu", form="label") == "cpu"


def test_a_result_records_the_words_of_its_backend():
    from membench import profile
    from membench.backbones.tiny import tiny

    model, ov = tiny("bert", layers=1)
    for target in ("cpu", "cuda"):
        r = profile(model, "lora", batch_size=1, seq_len=8, device="fake", target=target, overrides=ov)
        assert r.provenance["target"] == describe(r.device, r.target, r.gpu, form="record")
        assert r.provenance["target"] == WORDS["fake", target, r.provenance["device_name"]][0].replace(GPU, str(r.gpu))


def test_an_unknown_form_is_refused():
    with pytest.raises(ValueError, match="allowed: record, caption, label"):
        describe("cpu", "cpu", form="title")
