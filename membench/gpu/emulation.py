"""Run a step on fake CPU tensors as a CUDA GPU would run it, so autograd saves what the GPU saves.

Fake *CUDA* tensors do not work on a CPU-only torch (shared/cuda-notes.md section 1),
but the CUDA kernels' aten ops run on fake CPU tensors through their meta kernels,
forward and backward. So this module routes ops, not devices:

    F.scaled_dot_product_attention -> the kernel CUDA would pick (membench.gpu.sdpa):
        flash      aten._scaled_dot_product_flash_attention   (head dim padded to a multiple of 8)
        efficient  aten._scaled_dot_product_efficient_attention (bool mask -> additive, padded to 16)
        cudnn      aten._scaled_dot_product_cudnn_attention
        math       the math composite, with its dropout routed as below
    F.dropout (training, 0 < p < 1) -> aten.native_dropout: a 1-byte bool mask (CPU: a float mask)
    F.layer_norm in fp16/bf16      -> mean and rstd saved in fp32 (the CPU kernel keeps the input dtype)
    (under mixed precision, autocast's casts follow CUDA's policy: membench/gpu/autocast.py)

`KernelAllocations` adds what CUDA kernels allocate besides their outputs (tensors
the live tracker never sees): the cuBLAS workspace of each thread at its first
matmul (forward runs on the caller's thread, backward on autograd's device thread),
the cuBLASLt workspace at the first addmm with a bias, and the temporaries of the
fused attention backward kernels. They are events for the allocator replay.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .sdpa import SdpaCall, SdpaEnv, choose_backend
from .specs import CUBLASLT_WORKSPACE, GpuSpec

_REDUCED = (torch.float16, torch.bfloat16)


def enabled_backends() -> frozenset[str]:
    """The SDPA backends the global switches (torch.backends.cuda.*_sdp_enabled, sdpa_kernel) allow."""
    cuda = torch.backends.cuda
    flags = {"flash": cuda.flash_sdp_enabled, "efficient": cuda.mem_efficient_sdp_enabled,
             "math": cuda.math_sdp_enabled, "cudnn": getattr(cuda, "cudnn_sdp_enabled", lambda: True)}
    return frozenset(name for name, on in flags.items() if on())


def describe_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, enable_gqa=False) -> SdpaCall:
    """The facts of an SDPA call that CUDA's backend checks read."""
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    four = q.dim() == 4 and k.dim() == 4 and v.dim() == 4
    return SdpaCall(
        dtype=str(q.dtype).removeprefix("torch."), batch=q.shape[0] if four else 0,
        heads_q=q.shape[1] if four else 0, heads_kv=k.shape[1] if four else 0,
        seq_q=q.shape[-2], seq_k=k.shape[-2], head_dim_qk=q.shape[-1], head_dim_v=v.shape[-1],
        has_mask=attn_mask is not None, dropout_p=float(dropout_p), is_causal=bool(is_causal), requires_grad=grad,
        enable_gqa=bool(enable_gqa), dims=q.dim(),
        last_dim_contiguous=all(t.stride(-1) == 1 for t in (q, k, v)),
        offset_bytes=tuple(t.storage_offset() * t.element_size() for t in (q, k, v)))


def _additive_mask(mask, dtype):
    """A bool mask (True = attend) as an additive one (0 / -inf), as SDPA converts it."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    zero = torch.scalar_tensor(0.0, dtype=dtype, device=mask.device)
    neg = torch.scalar_tensor(-math.inf, dtype=dtype, device=mask.device)
    return torch.where(mask, zero, neg)


def _expand_gqa(q, k, v, enable_gqa):
    if enable_gqa and q.dim() == 4 and k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        return k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    return k, v


@dataclass(frozen=True)
class _Attention:
    """One scaled_dot_product_attention call, as the kernel CUDA picked for it takes it."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None
    dropout_p: float
    causal: bool
    scale: float | None
    gqa: bool  # enable_gqa
    grad: bool  # the call needs its backward (SdpaCall.requires_grad)


class _LayerNormFp32Stats(torch.autograd.Function):
    """CUDA's native_layer_norm on fp16/bf16 input: output in the input dtype, mean/rstd in fp32.

    Shapes only (this runs on fake tensors): the saved tensors are exactly CUDA's
    (input, mean, rstd, weight, bias), and backward calls the real backward op."""

    @staticmethod
    def forward(ctx, x, shape, weight, bias, eps):
        axis = x.dim() - len(shape)
        stat = (*x.shape[:axis], *([1] * len(shape)))
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        mean = x.new_empty(stat, dtype=torch.float32)
        rstd = x.new_empty(stat, dtype=torch.float32)
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.shape = list(shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[2],
                bias is not None and ctx.needs_input_grad[3]]
        gx, gw, gb = torch.ops.aten.native_layer_norm_backward(grad, x, ctx.shape, mean, rstd, weight, bias, mask)
        return gx, None, gw, gb, None


class CudaRouting(TorchFunctionMode):
    """Route the ops whose CUDA kernels save other tensors than the CPU ones (module docstring).

    `live` (set by profile_step) is the live tracker, told of outputs that a real
    GPU keeps in host memory (the memory-efficient kernel's philox seed and offset);
    `choices` counts the SDPA backends picked in the first step (forward and recompute)."""

    def __init__(self, gpu: GpuSpec, prefer_cudnn: bool | None = None):
        super().__init__()
        self.gpu = gpu
        self.prefer_cudnn = gpu.prefers_cudnn_sdpa if prefer_cudnn is None else prefer_cudnn
        self.live = None
        self.phase = "forward"  # set by profile_step; choices are counted in the first step only
        self.choices: Counter[str] = Counter()

    def env(self) -> SdpaEnv:
        return SdpaEnv(self.gpu.major, self.gpu.minor, enabled_backends(), prefer_cudnn=self.prefer_cudnn)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.backward or func is torch.autograd.backward:
            return self.backward(func, args, kwargs)
        if func is F.scaled_dot_product_attention:
            return self.sdpa(*args, **kwargs)
        if func is F.dropout:
            return self.dropout(*args, **kwargs)
        if (func is F.layer_norm and args and getattr(args[0], "dtype", None) in _REDUCED
                and not torch.is_autocast_enabled("cpu")):  # under autocast CUDA runs it in fp32 (gpu/autocast.py)
            return self.layer_norm(*args, **kwargs)
        return func(*args, **kwargs)

    # ---- backward ----------------------------------------------------------------------------------------
    def backward(self, func, args, kwargs):
        """Run backward with this mode active in it (recomputation: checkpointing, MEFT).

        A mode is popped while it handles a call, and autograd's engine copies the mode
        stack at the start of backward: called normally, backward would run unrouted. So
        the engine is called here directly, with this mode pushed again."""
        import inspect

        bound = inspect.signature(func).bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        if func is torch.Tensor.backward:
            tensors, grads = (a["self"],), (a["gradient"],)
        else:
            tensors = (a["tensors"],) if isinstance(a["tensors"], torch.Tensor) else tuple(a["tensors"])
            given = a["grad_tensors"] if a["grad_tensors"] is not None else a.get("grad_variables")
            grads = (given,) if given is None or isinstance(given, torch.Tensor) else tuple(given)
            grads = grads * len(tensors) if len(grads) == 1 and len(tensors) > 1 and grads[0] is None else grads
        filled = []
        for t, g in zip(tensors, grads, strict=True):
            if g is None:
                if t.numel() != 1:
                    raise RuntimeError("grad can be implicitly created only for scalar outputs")
                g = torch.ones_like(t, memory_format=torch.preserve_format)
            filled.append(g)
        create = bool(a["create_graph"])
        retain = create if a["retain_graph"] is None else a["retain_graph"]
        inputs = a["inputs"]
        inputs = () if inputs is None else ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs))
        run = getattr(torch.autograd.graph, "_engine_run_backward", None)
        if run is None:  # older torch: the engine itself
            run = torch.autograd.Variable._execution_engine.run_backward
        with self:
            run(tensors, tuple(filled), retain, create, inputs, allow_unreachable=True, accumulate_grad=True)

    # ---- dropout -----------------------------------------------------------------------------------------
    def dropout(self, input, p=0.5, training=True, inplace=False):
        if not training or not (0.0 < p < 1.0) or input.numel() == 0:
            return F.dropout(input, p, training, inplace)  # identity (or p == 1: zeros), as on CUDA
        out, _mask = torch.ops.aten.native_dropout(input, p, True)
        return input.copy_(out) if inplace else out

    # ---- layer norm --------------------------------------------------------------------------------------
    def layer_norm(self, input, normalized_shape, weight=None, bias=None, eps=1e-5):
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        return _LayerNormFp32Stats.apply(input, shape, weight, bias, eps)

    # ---- attention ---------------------------------------------------------------------------------------
    def sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
        if torch.is_autocast_enabled("cpu"):  # autocast casts SDPA's inputs before CUDA picks its kernel
            low = torch.get_autocast_dtype("cpu")
            query, key, value, attn_mask = (t.to(low) if isinstance(t, torch.Tensor) and t.is_floating_point()
                                            and t.dtype not in (low, torch.float64) else t
                                            for t in (query, key, value, attn_mask))
        call = describe_sdpa(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
        backend = choose_backend(call, self.env())
        if "." not in self.phase:  # "forward.2" etc.: a later step runs the same calls again
            self.choices[backend] += 1
        run = {"flash": self._flash, "efficient": self._efficient, "cudnn": self._cudnn, "math": self._math}[backend]
        return run(_Attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                              call.requires_grad))

    def _flash(self, a: _Attention):
        q, k, v = a.q, a.k, a.v
        head = q.shape[-1]
        scale = 1.0 / math.sqrt(head) if a.scale is None else a.scale  # of the head dim before padding
        pad = (8 - head % 8) % 8
        if pad:
            q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, a.dropout_p, a.causal, False,
                                                                 scale=scale)[0]
        return out[..., :head] if pad else out

    def _efficient(self, a: _Attention):
        q = a.q
        mask = _additive_mask(a.mask, q.dtype)
        if mask is not None:  # expand to [B, H, L, S]; pad the last dim to a multiple of 16, then slice
            mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], a.k.shape[2])
            last = mask.shape[-1]
            if last % 16:
                mask = F.pad(mask, (0, 16 - last % 16))[..., :last]
            elif any(s % 16 for s in mask.stride()[:3]):
                mask = mask.contiguous()
        k, v = _expand_gqa(q, a.k, a.v, a.gqa)
        out, _lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, mask, a.grad, a.dropout_p, a.causal, scale=a.scale)
        if self.live is not None:  # CPU scalars on a real GPU (outside graph capture)
            for t in (seed, offset):
                self.live.mark_host(t)
        return out

    def _cudnn(self, a: _Attention):
        mask = _additive_mask(a.mask, a.q.dtype)
        return torch.ops.aten._scaled_dot_product_cudnn_attention(a.q, a.k, a.v, mask, a.grad, a.dropout_p, a.causal,
                                                                   False, scale=a.scale)[0]

    def _math(self, a: _Attention):
        """The math composite (aten `_scaled_dot_product_attention_math`) op for op, its dropout routed."""
        q, k, v = a.q, a.k, a.v
        orig = q.dtype
        allow_reduced = getattr(torch.backends.cuda, "fp16_bf16_reduction_math_sdp_allowed", lambda: False)()
        upcast = orig in _REDUCED and not allow_reduced
        mask = _additive_mask(a.mask, orig)
        if upcast:
            q, k, v = q.float(), k.float(), v.float()
        k, v = _expand_gqa(q, k, v, a.gqa)
        factor = math.sqrt(1.0 / math.sqrt(q.shape[-1]) if a.scale is None else a.scale)
        qs = q * factor
        if a.causal:
            tri = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
            mask = _additive_mask(tri, q.dtype)
        attn = torch.matmul(qs, k.transpose(-2, -1) * factor)
        if mask is not None:
            attn.add_(mask)
        attn = torch.ops.aten._safe_softmax(attn, -1) if hasattr(torch.ops.aten, "_safe_softmax") else attn.softmax(-1)
        if a.dropout_p > 0.0:
            attn = self.dropout(attn, a.dropout_p, True)
        if upcast:
            attn.to(orig)  # the composite also returns the weights in the input dtype; SDPA drops them
        out = torch.matmul(attn, v)
        return out.to(orig) if upcast else out


# aten ops that call cuBLAS (and so get their thread's workspace on first use)
_CUBLAS_OPS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot", "_addmm_activation",
               "_scaled_mm"}


class KernelAllocations(TorchDispatchMode):
    """Allocations CUDA kernels make through the caching allocator besides their outputs.

    Each is an event `(position, nbytes, kind, label, phase)`: `position` is the live
    tracker's event count after the op ran (`live`, set by profile_step: the op's
    outputs are allocated first), `kind` is "persistent" (never freed) or "transient" (freed when the op
    returns). Set `.phase` as the step moves on: ops in "backward" run on
    autograd's device thread, which has its own cuBLAS handle and workspace."""

    def __init__(self, gpu: GpuSpec, lt_workspace: bool = True):
        super().__init__()
        self.gpu = gpu
        self.lt_workspace = lt_workspace
        self.phase = "forward"
        self.live = None
        self.events: list[tuple[int, int, str, str, str]] = []
        self._threads_with_workspace: set[str] = set()
        self._threads_with_lt: set[str] = set()

    def _thread(self) -> str:
        return "autograd" if self.phase == "backward" else "main"

    def _note(self, nbytes: int, kind: str, label: str) -> None:
        if nbytes > 0:
            position = self.live.event_count if self.live is not None else 0
            self.events.append((position, int(nbytes), kind, label, self.phase))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name in _CUBLAS_OPS:
            thread = self._thread()
            if thread not in self._threads_with_workspace:
                self._threads_with_workspace.add(thread)
                self._note(self.gpu.cublas_workspace_bytes, "persistent", f"cuBLAS workspace ({thread} thread)")
            if (self.lt_workspace and name == "addmm" and thread not in self._threads_with_lt
                    and isinstance(args[0], torch.Tensor) and args[0].dim() == 1):
                self._threads_with_lt.add(thread)
                self._note(CUBLASLT_WORKSPACE, "persistent", f"cuBLASLt workspace ({thread} thread)")
        elif name == "_scaled_dot_product_flash_attention_backward":
            q = args[1]  # grad_out, query, ...: [B, H, L, E]
            b, h, lq, d = q.shape
            lq_r = -(-lq // 128) * 128
            d_r = -(-d // 32) * 32 if d <= 128 else -(-d // 64) * 64
            self._note(4 * b * h * lq_r, "transient", "flash backward softmax_d")
            self._note(4 * b * lq_r * h * d_r, "transient", "flash backward dq_accum")
        elif name == "_scaled_dot_product_efficient_attention_backward":
            q = args[1]
            b, h, lq, _ = q.shape
            self._note(4 * b * h * lq, "transient", "efficient backward delta")
        return out
