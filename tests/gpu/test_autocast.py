"""CUDA's autocast policy on fake CPU tensors (membench/gpu/autocast.py): one BERT layer and one OPT layer under
bf16-mixed saved as hand-counted, the policy read from the installed torch, and nothing left behind."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from membench.gpu.autocast import CudaAutocastPolicy, cuda_policy, overrides
from membench.gpu.emulation import CudaRouting
from membench.gpu.specs import get as gpu

B, S, D, H = 2, 16, 64, 4  # batch, sequence, hidden, heads (head dim 16: flash on an A100)
BSD, BS = B * S * D, B * S


def test_the_policy_is_torchs_own():
    policy = cuda_policy()
    assert policy["aten::layer_norm"] == "fp32" and policy["aten::native_layer_norm"] == "fp32"
    assert policy["aten::softmax.int"] == policy["aten::log_softmax.int"] == "fp32_set_opt_dtype"
    assert policy["aten::addcmul"] == "promote" and policy["aten::linear"] == "lower"
    assert policy["aten::binary_cross_entropy"] == "banned"
    over = overrides()
    assert "aten::linear" not in over and "aten::mm" not in over  # both cast to low precision: C++ kept
    assert over["aten::einsum"] == "lower"  # only CUDA casts it
    assert over["aten::cat"] == over["aten::cross_entropy_loss"] == "pass"  # only the CPU casts them


def _saved(layer_fn, *, cuda_policy: bool, attn: str = "sdpa"):
    """Bytes saved for backward by one layer under bf16 autocast, by dtype: each storage once; parameters,
    their cast copies (weight copies) and the layer's input left out, as the ledger does."""
    mode = FakeTensorMode()
    with mode:
        layer = layer_fn(attn)
        params = {p.untyped_storage()._cdata for p in layer.parameters()}
        h = torch.randn(B, S, D, requires_grad=True) * 1.0  # a layer's input is no leaf: its casts are not cached
        seen: dict[int, tuple[str, int]] = {}
        copies: set[int] = set()

        def pack(t):
            key = t.untyped_storage()._cdata
            if key not in params and key != h.untyped_storage()._cdata:
                seen.setdefault(key, (str(t.dtype).removeprefix("torch."), t.untyped_storage().nbytes()))
                if t.dim() == 2 and t.shape[0] != BS and t.shape[-1] in (D, 4 * D) and t.shape[0] in (D, 4 * D):
                    copies.add(key)  # a cast weight [out, in] (no activation here has that shape)
            return t

        policy = CudaAutocastPolicy() if cuda_policy else None
        with (policy or torch.autocast("cpu", enabled=False)), CudaRouting(gpu("a100-80gb")), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            layer(h)
    out: dict[str, int] = {}
    for key, (dtype, n) in seen.items():
        if key not in copies:
            out[dtype] = out.get(dtype, 0) + n
    return out, len(copies)


def bert_layer(attn):
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    cfg = BertConfig(hidden_size=D, num_attention_heads=H, intermediate_size=4 * D, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = attn
    return BertLayer(cfg)


def opt_layer(attn):
    from transformers import OPTConfig
    from transformers.models.opt.modeling_opt import OPTDecoderLayer

    cfg = OPTConfig(hidden_size=D, num_attention_heads=H, ffn_dim=4 * D, dropout=0.0, attention_dropout=0.0)
    cfg._attn_implementation = attn
    return OPTDecoderLayer(cfg, layer_idx=0)


def test_bert_layer_bf16_mixed_saves_as_counted():
    """Post-LN BERT layer, SDPA (flash on an A100), no dropout:
    bf16: the fp32 input h cast three times (q, k and v's linears: h is no leaf, so no cast cache), q, k, v,
          flash's output (laid out [b, s, h, d]: the output dense reads it as a view, no copy), the first
          LayerNorm's output cast (the FFN's input), the FFN's pre-GELU and post-GELU [b, s, 4d]:
          (3+3+1+1) bsd + 8 bsd = 16 bsd
    fp32: each LayerNorm's input (the residual sum, fp32 + bf16 -> fp32) and its mean and rstd [b, s, 1];
          flash's logsumexp [b, h, s]
    uint64: flash's philox seed [2] and offset []
    and six weights cast to bf16 (charged apart, as weight copies)."""
    saved, copies = _saved(bert_layer, cuda_policy=True)
    assert saved == {"bfloat16": 2 * 16 * BSD, "float32": 4 * (2 * BSD + 4 * BS + B * H * S), "uint64": 16 + 8}
    assert copies == 6


def test_opt_layer_bf16_mixed_saves_as_counted():
    """Pre-LN OPT decoder layer, SDPA (flash, causal), no dropout:
    bf16: the first LayerNorm's fp32 output cast three times (q, k, v), q, k, v, flash's output (out_proj reads
          it as a view), the second LayerNorm's output cast (fc1's input), ReLU's output [b, s, 4d] (saved by
          ReLU and fc2 alike: one storage):  (3+3+1+1) bsd + 4 bsd = 12 bsd
    fp32: the first LayerNorm's input is the layer's input (not counted); its mean and rstd; the second's
          input (h + attention, fp32) with its mean and rstd; flash's logsumexp
    uint64: philox seed and offset; six weight copies."""
    saved, copies = _saved(opt_layer, cuda_policy=True)
    assert saved == {"bfloat16": 2 * 12 * BSD, "float32": 4 * (BSD + 4 * BS + B * H * S), "uint64": 16 + 8}
    assert copies == 6


def test_eager_softmax_is_fp32_on_cuda_and_bf16_on_the_cpu():
    """BERT's eager attention calls softmax without a dtype: CUDA runs it in fp32 (fp32_set_opt_dtype), so
    softmax saves fp32 probabilities and the matmul with v saves their bf16 cast; CPU autocast leaves softmax
    in bf16: one bf16 tensor, saved by both."""
    cuda, _ = _saved(bert_layer, cuda_policy=True, attn="eager")
    cpu, _ = _saved(bert_layer, cuda_policy=False, attn="eager")
    probs = B * H * S * S
    assert cuda["float32"] - cpu["float32"] == 4 * probs
    assert cuda["bfloat16"] == cpu["bfloat16"]


def test_the_kernels_are_gone_on_exit():
    x = torch.randn(4, 8)
    with CudaAutocastPolicy(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.layer_norm(x.bfloat16(), (8,)).dtype == torch.float32
        assert torch.softmax(x.bfloat16(), -1).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.layer_norm(x.bfloat16(), (8,)).dtype == torch.bfloat16


def test_cross_entropy_decomposes_as_on_cuda():
    """CPU autocast runs cross_entropy_loss in fp32: the fp16 logits are cast to fp32, then log_softmax runs in
    fp32. CUDA autocast falls through to the composite: log_softmax(dtype=the logits' fp16), and nll_loss
    (fp32 policy) casts the fp16 log-probabilities to fp32."""
    def log_softmax_input(cuda: bool):
        seen = []

        class Record(torch.utils._python_dispatch.TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten._log_softmax.default:
                    seen.append(args[0].dtype)
                if func is torch.ops.aten.nll_loss_forward.default:
                    seen.append(("nll", args[0].dtype))
                return func(*args, **(kwargs or {}))

        with FakeTensorMode():
            logits = torch.randn(8, 100, requires_grad=True).half()
            target = torch.randint(0, 100, (8,))
            with CudaAutocastPolicy() if cuda else torch.autocast("cpu", enabled=False), \
                    torch.autocast("cpu", dtype=torch.float16), Record():
                torch.nn.functional.cross_entropy(logits, target)
        return seen

    assert log_softmax_input(cuda=True) == [torch.float16, ("nll", torch.float32)]
    assert log_softmax_input(cuda=False) == [torch.float32, ("nll", torch.float32)]


def test_fp16_softmax_into_fp32_reads_the_fp16_input():
    """CUDA's softmax(fp16, dtype=fp32) is one kernel (half_to_float); the CPU composite copies the input to
    fp32 first."""
    def casts(cuda: bool):
        seen = []

        class Record(torch.utils._python_dispatch.TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                seen.append(func.__name__)
                return func(*args, **(kwargs or {}))

        with FakeTensorMode():
            x = torch.randn(4, 8).half()
            with CudaAutocastPolicy() if cuda else torch.autocast("cpu", enabled=False), Record():
                y = torch.softmax(x, -1, dtype=torch.float32) if not cuda else None
                with torch.autocast("cpu", dtype=torch.float16, enabled=cuda):
                    y = torch.softmax(x, -1) if cuda else y  # no dtype: CUDA autocast sets fp32
        assert y.dtype == torch.float32
        return seen

    cuda, cpu = casts(cuda=True), casts(cuda=False)
    assert "_softmax.default" in cuda and "_to_copy.default" not in cuda
    assert "_softmax.default" in cpu and "_to_copy.default" in cpu


def test_binary_cross_entropy_is_refused_as_cuda_refuses_it():
    x = torch.rand(4)
    with CudaAutocastPolicy(), torch.autocast("cpu", dtype=torch.bfloat16), \
            pytest.raises(RuntimeError, match="unsafe to autocast"):
        torch.ops.aten.binary_cross_entropy(x, x)
