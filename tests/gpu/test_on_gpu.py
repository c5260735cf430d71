"""On a real GPU: the predictions against what CUDA does (skipped without one; benchmarks/gpu_session.sh runs them).

The full grid with figures is benchmarks/gpu_validate.py; these are its quick, strict checks.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from membench import profile
from membench.backbones.tiny import tiny

pytestmark = pytest.mark.gpu

NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn"}


def _spec():
    from membench.runner import real_gpu_spec

    return real_gpu_spec()


@pytest.mark.parametrize("dtype, head_dim, mask, dropout, causal, grad", list(itertools.product(
    (torch.float32, torch.bfloat16, torch.float16), (64, 128, 256), (False, True), (0.0, 0.1), (False, True),
    (False, True))))
def test_sdpa_choice_is_torchs(dtype, head_dim, mask, dropout, causal, grad):
    from membench.gpu.emulation import describe_sdpa, enabled_backends
    from membench.gpu.sdpa import SdpaEnv, choose_backend

    if mask and causal:
        pytest.skip("SDPA refuses a mask together with is_causal")
    spec = _spec()
    q, k, v = (torch.randn(2, 4, 128, head_dim, device="cuda", dtype=dtype, requires_grad=grad) for _ in range(3))
    m = torch.zeros(2, 1, 128, 128, device="cuda", dtype=dtype) if mask else None
    torch_pick = NAMES[int(torch._fused_sdp_choice(q, k, v, m, dropout, causal))]
    env = SdpaEnv(spec.major, spec.minor, enabled_backends(), prefer_cudnn=spec.prefers_cudnn_sdpa)
    assert choose_backend(describe_sdpa(q, k, v, m, dropout, causal), env) == torch_pick


@pytest.mark.parametrize("family", ["bert", "opt"])
@pytest.mark.parametrize("method", ["full", "lora", "meft1"])
@pytest.mark.parametrize("dtype, attn", [("fp32", "sdpa"), ("bf16", "sdpa"), ("bf16", "eager")])
def test_fake_target_cuda_saves_what_the_gpu_saves(family, method, dtype, attn):
    model, ov = tiny(family, layers=2, hidden=128, heads=2)
    kw = dict(batch_size=2, seq_len=64, dtype=dtype, attn=attn, overrides=ov)
    gpu = profile(model, method, device="cuda", **kw)
    fake = profile(model, method, device="fake", target="cuda", gpu=_spec(), **kw)
    assert fake.layer_bytes == gpu.layer_bytes
    # the GPU ran two training steps, the prediction counts the first one's calls
    assert {k: 2 * n for k, n in fake.predicted_cuda["sdpa_backends"].items()} == gpu_sdpa(model, method, kw)


def gpu_sdpa(model, method, kw):
    """The backends torch runs for the SDPA calls of a profiled run on this GPU (forward and recompute)."""
    counts: dict[str, int] = {}
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **rest):
        name = NAMES[int(torch._fused_sdp_choice(q, k, v, attn_mask, dropout_p, is_causal))]
        counts[name] = counts.get(name, 0) + 1
        return real(q, k, v, attn_mask, dropout_p, is_causal, **rest)

    mp = pytest.MonkeyPatch()
    mp.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    try:
        profile(model, method, device="cuda", **kw)
    finally:
        mp.undo()
    return counts


def test_allocator_replay_matches_the_gpu():
    """The GPU run's own allocations through the allocator model: the allocator's peaks, within the goals."""
    model, ov = tiny("opt", layers=2, hidden=256, heads=4)
    r = profile(model, "full", device="cuda", batch_size=8, seq_len=256, dtype="bf16", overrides=ov)
    measured, replay = r.cuda, r.predicted_cuda
    assert abs(replay["max_allocated_bytes"] / measured["max_allocated_bytes"] - 1) <= 0.01
    assert abs(replay["max_reserved_bytes"] / measured["max_reserved_bytes"] - 1) <= 0.03
    assert replay["allocated_after_step_bytes"] == measured["end_allocated_bytes"]


@pytest.mark.parametrize("family", ["bert", "opt", "llama"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fake_target_cuda_autocasts_as_the_gpu(family, precision, attn):
    """Mixed precision: CUDA's autocast policy, emulated on fake tensors (membench/gpu/autocast.py), saves what
    the GPU's real autocast saves, layer by layer."""
    model, ov = tiny(family, layers=2, hidden=128, heads=2)
    kw = dict(batch_size=2, seq_len=64, attn=attn, overrides=ov, precision=precision)
    gpu = profile(model, "full", device="cuda", **kw)
    fake = profile(model, "full", device="fake", target="cuda", gpu=_spec(), **kw)
    assert fake.layer_bytes == gpu.layer_bytes
    assert fake.weight_copy_bytes == gpu.weight_copy_bytes


@pytest.mark.parametrize("batch_size, seq_len", [(2, 64), (8, 256)])  # 128 rows: fused kernel; 2048: fallback
@pytest.mark.parametrize("quant", ["nf4", "nf4+dq"])
def test_qlora_prediction_is_the_gpus(quant, batch_size, seq_len):
    """A QLoRA step (bitsandbytes on this GPU) against its fake-tensor prediction: saved tensors per layer exactly,
    max allocated within 1% (the 4-bit matmul's CUDA dispatch: membench/gpu/bnb.py)."""
    pytest.importorskip("bitsandbytes")
    model, ov = tiny("llama", layers=2, hidden=256, heads=4)
    kw = dict(batch_size=batch_size, seq_len=seq_len, dtype="bf16", overrides=ov, quant="nf4",
              quant_double_quant=quant.endswith("+dq"), kbit_ckpt=False)
    gpu = profile(model, "lora", device="cuda", **kw)
    fake = profile(model, "lora", device="fake", target="cuda", gpu=_spec(), **kw)
    assert fake.layer_bytes == gpu.layer_bytes
    measured, predicted = gpu.cuda["max_allocated_bytes"], fake.predicted_cuda.max_allocated_bytes
    assert abs(predicted - measured) <= 0.01 * measured, (predicted, measured)
