"""Target cuda on fake tensors: what autograd saves, pinned to hand-counted closed forms.

bert-base (h=768, f=3072, 12 heads), batch 16, sequence 512: T = 8192 tokens. Per layer,
full fine-tuning, dropout 0.1, on an A100 (sm80), one charge per storage:

    X (input of q/k/v)           T h b        attention output (saved by SDPA, read by the
    q, k, v (saved by SDPA)      3 T h b       output projection: the same storage)  T h b
    LayerNorm inputs x2          2 T h b      intermediate input   T h b
    GELU input, output-proj in   2 T f b      dropout masks x2     2 T h   (bool, 1 byte)
    LayerNorm mean+rstd x2       16 T         (fp32 on CUDA, also for bf16 input)
    SDPA logsumexp               efficient: 4 B a ceil(L/32)*32   flash: 4 B a L
    philox seed/offset           efficient: 2 x int64             flash: uint64[2] + uint64[]

    => 8 T h b + 2 T f b + 2 T h + 16 T + lse + rng
"""

from __future__ import annotations

import pytest
import torch

from membench import profile
from membench.backbones.tiny import text_seq, tiny

B, L, H, F_, A = 16, 512, 768, 3072, 12
T = B * L
MiB = 2**20


def bert(dtype="fp32", attn="sdpa", target=None, gpu=None, method="full", layers=3, **kw):
    return profile("bert-base", method, batch_size=B, seq_len=L, dtype=dtype, attn=attn, device="fake",
                   target=target, gpu=gpu, overrides={"num_hidden_layers": layers}, **kw)


def stack(result) -> list[int]:
    return [v for k, v in result.layer_bytes.items() if k.startswith("layers.")]


def test_bert_fp32_sdpa_layer_is_the_closed_form():
    b = 4
    lse = 4 * B * A * (-(-L // 32) * 32)
    expected = 8 * T * H * b + 2 * T * F_ * b + 2 * T * H + 16 * T + lse + 16
    r = bert()
    assert expected == 415_760_400  # 396.5 MiB + 16 B
    assert stack(r) == [expected] * 3
    assert r.predicted_cuda["sdpa_backends"] == {"efficient": 3}
    assert (r.target, r.gpu) == ("cuda", "a100-80gb")


def test_bert_bf16_sdpa_layer_runs_flash():
    b = 2
    expected = 8 * T * H * b + 2 * T * F_ * b + 2 * T * H + 16 * T + 4 * B * A * L + 16 + 8
    r = bert("bf16")
    assert stack(r) == [expected] * 3
    assert r.predicted_cuda["sdpa_backends"] == {"flash": 3}


@pytest.mark.parametrize("dtype, mask_bytes_saved", [("fp32", 3), ("bf16", 1)])
def test_eager_is_the_cpu_figure_minus_the_dropout_masks(dtype, mask_bytes_saved):
    """CPU dropout keeps a mask of the input dtype, CUDA's native_dropout a bool: the only difference
    (besides bf16 LayerNorm statistics, fp32 on CUDA: 2 stats x 2 extra bytes x T x 2 LayerNorms)."""
    cpu, cuda = bert(dtype, "eager", target="cpu"), bert(dtype, "eager")
    dropout_elems = B * A * L * L + 2 * T * H  # attention probabilities, two hidden dropouts
    ln_stats = 0 if dtype == "fp32" else 2 * 2 * T * 2
    for c, g in zip(stack(cpu), stack(cuda), strict=True):
        assert c - g == mask_bytes_saved * dropout_elems - ln_stats


def test_cpu_target_keeps_cpu_kernels():
    r = bert(target="cpu")
    assert r.target == "cpu" and r.gpu is None and r.predicted_cuda is None
    assert stack(r)[0] > 1000 * MiB  # the math kernel's s x s probabilities, float masks


def test_math_path_differs_from_cpu_only_by_dropout_masks():
    """With only the math backend enabled, the routed math composite saves what the CPU math kernel
    saves, except native_dropout's bool mask (1 byte) for the CPU's float one (4 bytes)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        cpu, cuda = bert(target="cpu", layers=2), bert(layers=2)
    assert cuda.predicted_cuda["sdpa_backends"] == {"math": 2}
    dropout_elems = B * A * L * L + 2 * T * H
    assert [c - g for c, g in zip(stack(cpu), stack(cuda), strict=True)] == [3 * dropout_elems] * 2


def test_h100_prefers_cudnn_when_it_can():
    model, ov = tiny("opt", layers=2, hidden=64, heads=2)  # head dim 32, no attention dropout in OPT
    r = profile(model, "full", batch_size=2, seq_len=64, dtype="bf16", device="fake", gpu="h100-80gb", overrides=ov)
    assert r.predicted_cuda["sdpa_backends"] == {"cudnn": 2}
    r = profile(model, "full", batch_size=2, seq_len=64, dtype="bf16", device="fake", gpu="a100-80gb", overrides=ov)
    assert r.predicted_cuda["sdpa_backends"] == {"flash": 2}


@pytest.mark.parametrize("method", ["full+ckpt", "meft1", "meft3"])
def test_recompute_in_backward_is_routed_too(family_name, method):
    """Checkpointing and MEFT run forward code in backward: it must see CUDA's kernels as well (a
    checkpoint checks that the recompute saves what the forward saved, and fails otherwise)."""
    model, ov = tiny(family_name, layers=2)
    r = profile(model, method, batch_size=2, seq_len=text_seq(family_name, 16), device="fake", overrides=ov)
    assert r.recompute_bytes > 0
    calls = sum(r.predicted_cuda["sdpa_backends"].values())
    stacks = 2 if family_name == "bart" else 1
    forward = 2 * stacks + (2 if family_name == "bart" else 0)  # BART's decoder has cross-attention too
    assert calls == 2 * forward  # every attention runs again in backward


def test_checkpointed_books_balance_on_the_cuda_target():
    plain, ckpt = bert(layers=3), bert(method="full+ckpt", layers=3)
    mid = "layers.1"
    row = {r.name: r for r in ckpt.layers}[mid]
    assert row.activation_bytes == T * H * 4  # only the layer's input is kept
    assert row.activation_bytes + row.recompute_bytes == plain.layer_bytes[mid]


def test_dropout_and_layer_norm_routing_on_a_module():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from membench.gpu import specs
    from membench.gpu.emulation import CudaRouting

    saved = []
    with FakeTensorMode():
        x = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
        w = torch.ones(8, dtype=torch.bfloat16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, tuple(t.shape))) or t,
                                                      lambda t: t), CudaRouting(specs.get("a100-80gb")):
            y = torch.nn.functional.dropout(x, 0.25, training=True)
            z = torch.nn.functional.layer_norm(y, (8,), w, w)
            torch.nn.functional.dropout(z, 0.25, training=False)  # identity: saves nothing
        assert (torch.bool, (4, 8)) in saved  # native_dropout's mask
        assert saved.count((torch.float32, (4, 1))) == 2  # LayerNorm mean and rstd in fp32
        z.float().sum().backward()
        assert x.grad.shape == x.shape and w.grad.shape == w.shape
