"""bitsandbytes' 4-bit matmul as its CUDA dispatch runs it, on fake tensors.

A Linear4bit's forward is one op, `bitsandbytes::gemm_4bit`; its fake kernel returns the output only, which
is what the fused CUDA kernel allocates. The CUDA dispatch (bitsandbytes/backends/cuda/ops.py) runs that
kernel only for few rows (M = batch x sequence): past 1536 rows, for a K not a multiple of the block size,
or where its per-GPU heuristic finds dequantize-then-matmul faster, it runs a fallback that allocates
through the caching allocator:

    absmax_dq = empty fp32 [blocks]          double quantization only: the 8-bit absmax, dequantized
    absmax    = absmax_dq + offset           fp32 [blocks]
    B_dq      = empty A.dtype [N, K]         the weight, dequantized
    out       = F.linear(A, B_dq, bias)      cuBLAS

The fused kernel allocates its output, and a contiguous copy of a non-contiguous input first.
`CudaGemm4bit` runs exactly these ops on the fake tensors in place of the op, so the live tracker and the
allocator replay see them (and KernelAllocations the cuBLAS workspace). The heuristic is the installed
bitsandbytes' own `_gemm_4bit_use_custom_cuda`, read from its source (its module loads CUDA libraries and
cannot be imported without a GPU) and evaluated with the target GPU's SM count and compute capability.
The backward (MatMul4Bit.backward: dequantize_4bit, then matmul) is Python-level: the same ops everywhere.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import UserError
from .specs import GpuSpec

_HEURISTIC = "_gemm_4bit_use_custom_cuda"
_NAMES = ("_GEMM_4BIT_CUSTOM_FLOOR_M", "_gemm_4bit_custom_max_m")


@functools.cache
def cuda_dispatch() -> dict:
    """The installed bitsandbytes' CUDA choice between its kernel and the fallback: the heuristic function and
    the constants it reads (the CUDA branch of the module's `if torch.version.hip is None:`)."""
    origin = importlib.util.find_spec("bitsandbytes").origin
    path = Path(origin).parent / "backends" / "cuda" / "ops.py"
    tree = ast.parse(path.read_text())
    nodes = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == _HEURISTIC:
            node.decorator_list = []  # functools.cache: calls here differ by GPU
            nodes.append(node)
        elif isinstance(node, ast.If) and "hip is None" in ast.unparse(node.test):
            nodes += [n for n in node.body if isinstance(n, ast.Assign)]
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) in _NAMES for t in node.targets):
            nodes.append(node)
    namespace = {"torch": torch, "functools": functools}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    missing = [n for n in (_HEURISTIC, *_NAMES) if n not in namespace]
    if missing:
        raise UserError(f"the installed bitsandbytes ({path}) lacks {', '.join(missing)}: membench reads its CUDA "
                        "4-bit dispatch from bitsandbytes 0.50; predict with --target cpu, or install bitsandbytes 0.50")
    return namespace


def fused_kernel(gpu: GpuSpec, dtype, m: int, n: int, k: int, blocksize: int) -> bool:
    """Whether bitsandbytes' CUDA gemm_4bit runs its fused kernel (True) or the dequantize fallback."""
    ns = cuda_dispatch()
    if m > ns["_gemm_4bit_custom_max_m"] or k % blocksize:
        return False
    ns["_gpu_dispatch_props"] = lambda _index: (gpu.sms, gpu.major, gpu.minor)
    return bool(ns[_HEURISTIC](0, dtype, m, n, k))


_GEMM_ARGS = ("A", "B", "shapeB", "absmax", "blocksize", "quant_type", "bias", "absmax_8bit", "absmax_code",
              "absmax_offset")  # bitsandbytes::gemm_4bit's schema


class CudaGemm4bit(TorchDispatchMode):
    """`bitsandbytes::gemm_4bit` as its CUDA dispatch runs it on `gpu` (module docstring)."""

    def __init__(self, gpu: GpuSpec):
        super().__init__()
        self.gpu = gpu
        self.fallbacks = 0  # calls that took the dequantize fallback

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.ops.bitsandbytes.gemm_4bit.default:
            return func(*args, **kwargs)
        call = dict(zip(_GEMM_ARGS, args, strict=False)) | kwargs
        A, shapeB, absmax, blocksize = call["A"], call["shapeB"], call["absmax"], call["blocksize"]
        bias, absmax_8bit, absmax_offset = call.get("bias"), call.get("absmax_8bit"), call.get("absmax_offset")
        k = A.shape[-1]
        if fused_kernel(self.gpu, A.dtype, A.numel() // k, shapeB[0], k, blocksize):
            if not A.is_contiguous():  # the fused kernel reads A row-major: `A = A.contiguous()` first, a copy
                call["A"] = torch.ops.aten.clone.default(A, memory_format=torch.contiguous_format)
                return func(**call)
            return func(*args, **kwargs)
        self.fallbacks += 1
        # the temporaries are locals of bitsandbytes' `_dequant_linear_fallback`: they live until it returns, after
        # the matmul's output exists, and go in the same order here (absmax, absmax_dq, the weight)
        absmax_dq = None
        if absmax_8bit is not None:
            absmax_dq = torch.empty_like(absmax_8bit, dtype=torch.float32)
            absmax = absmax_dq + absmax_offset
        weight = torch.empty(list(shapeB), dtype=A.dtype, device=A.device)
        out = _linear(A, weight, bias)
        del absmax, absmax_dq, weight
        return out


def _linear(a, weight, bias):
    """F.linear as aten's composite runs it on a contiguous input: the rows folded (a view), one mm / addmm (the
    modes below see the cuBLAS call), the output unfolded. A non-contiguous input is copied first."""
    aten = torch.ops.aten
    if not a.is_contiguous():
        a = aten.clone.default(a, memory_format=torch.contiguous_format)
    rows = aten.view.default(a, [-1, a.shape[-1]])
    wt = aten.t.default(weight)
    out = aten.addmm.default(bias, rows, wt) if bias is not None else aten.mm.default(rows, wt)
    return aten.view.default(out, [*a.shape[:-1], weight.shape[0]])
