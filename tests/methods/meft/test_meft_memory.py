"""MEFT memory: saved activations flat in depth (negative control: full grows), per-layer rows, stated costs."""

from __future__ import annotations

import pytest

from membench import profile
from membench.backbones.tiny import FAMILY_MODELS, text_seq, tiny_overrides

from .meft_helpers import FAMILIES, rotation

ROTATE = rotation()
B, S, D = 2, 32, 32


def _run(family, method, layers, device="cpu", options=None, hidden=D, target=None):
    return profile(FAMILY_MODELS[family], method, batch_size=B, seq_len=text_seq(family, S), device=device,
                   target=target,
                   overrides=tiny_overrides(family, layers=layers, hidden=hidden), method_options=options)


def _stack_bytes(result) -> int:
    """Saved bytes of the layer rows: embeddings, head and outside set apart."""
    return sum(r.activation_bytes for r in result.layers if r.name not in ("embeddings", "head", "outside"))


def _flat(small, big) -> bool:
    return abs(_stack_bytes(big) - _stack_bytes(small)) <= 0.02 * _stack_bytes(small)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_activations_flat_in_depth_negative_control_full(family):
    method = ROTATE[family]
    small, big = _run(family, method, 4), _run(family, method, 8)
    assert _flat(small, big), (_stack_bytes(small), _stack_bytes(big))
    # the peak (which includes one layer's recompute) does not grow either
    assert abs(big.peak_activation_bytes - small.peak_activation_bytes) <= 0.02 * small.peak_activation_bytes
    assert big.peak_phase == "backward"
    full_small, full_big = _run(family, "full", 4), _run(family, "full", 8)
    assert not _flat(full_small, full_big)  # the same check fails for plain autograd
    assert _stack_bytes(full_big) > 1.8 * _stack_bytes(full_small)


@pytest.mark.slow
def test_fake_backend_12_vs_24_layers():
    small = _run("opt", "meft3", 12, device="fake", hidden=64)
    big = _run("opt", "meft3", 24, device="fake", hidden=64)
    assert _flat(small, big)
    assert not _flat(_run("opt", "full", 12, device="fake", hidden=64), _run("opt", "full", 24, device="fake", hidden=64))


@pytest.mark.parametrize("family", ["bert", "opt", "bart"])
def test_per_layer_rows(family):
    """Forward: only the two final streams are kept (reported on the stack's first layer row); backward:
    every layer recomputes the same bytes, charged to its own row."""
    res = _run(family, "meft1", 4)
    rows = {r.name: r for r in res.layers}
    stacks = ["encoder", "decoder"] if family == "bart" else ["layers"]
    for st in stacks:
        assert rows[f"{st}.0"].activation_bytes >= 2 * B * S * D * 4
        assert all(rows[f"{st}.{i}"].activation_bytes == 0 for i in (1, 2, 3))
        rec = [rows[f"{st}.{i}"].recompute_bytes for i in range(4)]
        assert all(r > 0 for r in rec) and rec[1] == rec[2]
    assert rows.get("outside") is None or rows["outside"].recompute_bytes == 0


def test_checkpoints_and_fp64_streams_cost_what_the_docs_say():
    hidden = B * S * D * 4
    base = _stack_bytes(_run("opt", "meft3", 4))
    # checkpoints at layers 0 (x1 = x2 = the stack input: one tensor) and 2 (two tensors)
    ck = _stack_bytes(_run("opt", "meft3", 4, options={"checkpoint_every": 2}))
    assert ck - base == 3 * hidden
    fp64 = _stack_bytes(_run("opt", "meft3", 4, options={"recon_dtype": "fp64"}))
    assert fp64 - base == 2 * hidden  # the two saved streams in fp64 instead of fp32


@pytest.mark.parametrize("family", FAMILIES)
def test_fake_backend_matches_cpu(family):
    """Fake tensors (no data-dependent control flow, RNG capture works) give the CPU run's bytes."""
    method = ROTATE[family]
    fake, cpu = _run(family, method, 2, device="fake", target="cpu"), _run(family, method, 2, device="cpu")
    assert fake.recompute_bytes == cpu.recompute_bytes > 0
    for name, nbytes in cpu.layer_bytes.items():
        extra = fake.layer_bytes[name] - nbytes
        # Known fake-tensor artefact (profiling-notes): BART's decoder gets a dense 4-D bool causal mask
        # under fake tensors where the real run passes None; the stack keeps its per-call inputs for the
        # recompute, so the mask (b x 1 x s x s bytes) shows on the stack's first row.
        allowed = B * S * S if (family == "bart" and name == "decoder.0") else 0
        assert extra in (0, allowed), (name, extra)


def test_fake_backend_runs_bf16():
    res = profile("opt-125m", "meft3", batch_size=2, seq_len=16, dtype="bf16", device="fake",
                  overrides=tiny_overrides("opt", layers=2))
    assert res.num_trainable_params > 0 and res.peak_phase == "backward"
