"""bitsandbytes' CUDA 4-bit matmul on fake tensors (membench/gpu/bnb.py): its dispatch read from the installed
source, and the fallback's allocations."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("bitsandbytes")

from membench.bnb import import_bitsandbytes  # noqa: E402
from membench.gpu import specs  # noqa: E402
from membench.gpu.bnb import CudaGemm4bit, cuda_dispatch, fused_kernel  # noqa: E402


def test_the_dispatch_is_read_from_the_installed_bitsandbytes():
    ns = cuda_dispatch()
    assert ns["_gemm_4bit_custom_max_m"] == 1536 and ns["_GEMM_4BIT_CUSTOM_FLOOR_M"] >= 1
    a100 = specs.get("a100-80gb")
    assert fused_kernel(a100, torch.bfloat16, 1, 4096, 4096, 64)  # a token at a time: the fused kernel
    assert not fused_kernel(a100, torch.bfloat16, 2048, 4096, 4096, 64)  # past 1536 rows: the fallback
    assert not fused_kernel(a100, torch.bfloat16, 16, 4096, 4100, 64)  # K not a multiple of the block


class Allocations(TorchDispatchMode):
    """The outputs of every op below the mode under test: what the live tracker would see."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, tuple | list) else [out]):
            if isinstance(t, torch.Tensor):
                self.sizes.append((func.__name__.split(".")[0], tuple(t.shape), t.dtype))
        return out


@pytest.mark.parametrize("double_quant", [False, True])
def test_the_fallback_allocates_what_the_cuda_dispatch_does(double_quant):
    bnb = import_bitsandbytes()
    from torch._subclasses.fake_tensor import FakeTensorMode

    n, k, rows = 256, 128, 2048
    w = torch.randn(n, k, dtype=torch.bfloat16)
    packed, state = bnb.functional.quantize_4bit(w, blocksize=64, compress_statistics=double_quant, quant_type="nf4")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        a = mode.from_tensor(torch.randn(rows, k, dtype=torch.bfloat16))
        seen = Allocations()
        with seen, CudaGemm4bit(specs.get("a100-80gb")) as gemm:
            out = bnb.matmul_4bit(a, packed.t(), quant_state=state)
    assert gemm.fallbacks == 1 and tuple(out.shape) == (rows, n)
    blocks = n * k // 64
    expected = [((n, k), torch.bfloat16)]  # the dequantized weight, then the matmul's output
    if double_quant:
        expected = [((blocks,), torch.float32), ((blocks,), torch.float32)] + expected
    made = [(shape, dtype) for op, shape, dtype in seen.sizes if op in ("empty", "empty_like", "add", "empty_strided")]
    assert made[:len(expected)] == expected
    assert any(op in ("mm", "addmm") for op, *_ in seen.sizes), seen.sizes  # (KernelAllocations: cuBLAS)


def test_the_fused_kernel_copies_a_non_contiguous_input():
    """`_gemm_4bit_kernel_impl` makes A contiguous before the kernel: a transposed input costs a copy."""
    bnb = import_bitsandbytes()
    from torch._subclasses.fake_tensor import FakeTensorMode

    n, k = 256, 128
    packed, state = bnb.functional.quantize_4bit(torch.randn(n, k, dtype=torch.bfloat16), blocksize=64,
                                                 quant_type="nf4")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        a = mode.from_tensor(torch.randn(k, 1, dtype=torch.bfloat16)).t()  # one row, strides (1, 1)
        b = mode.from_tensor(torch.randn(3, k, dtype=torch.bfloat16))[:, None, :].expand(3, 2, k)  # not contiguous
        for x, copies in ((a, 0), (b, 1)):
            seen = Allocations()
            with seen, CudaGemm4bit(specs.get("a100-80gb")) as gemm:
                out = torch.ops.bitsandbytes.gemm_4bit.default(x, packed, [n, k], state.absmax, 64, "nf4")
            assert gemm.fallbacks == 0 and tuple(out.shape) == (*x.shape[:-1], n)
            assert sum(op == "clone" for op, *_ in seen.sizes) == copies


def test_the_fallback_keeps_its_temporaries_until_the_output_exists():
    """In bitsandbytes' fallback the dequantized weight and the absmax copies are locals: freed after the matmul."""
    bnb = import_bitsandbytes()
    from torch._subclasses.fake_tensor import FakeTensorMode

    from membench.profilers.live import LiveMemoryTracker

    n, k, rows = 256, 128, 2048
    packed, state = bnb.functional.quantize_4bit(torch.randn(n, k, dtype=torch.bfloat16), blocksize=64,
                                                 compress_statistics=True, quant_type="nf4")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        a = mode.from_tensor(torch.randn(rows, k, dtype=torch.bfloat16))
        weight = mode.from_tensor(packed)  # (the weight exists before: not the step's)
        tracker = LiveMemoryTracker([a, weight])
        with tracker, CudaGemm4bit(specs.get("a100-80gb")):
            out = bnb.matmul_4bit(a, weight.t(), quant_state=state)
    weight_bytes, out_bytes, blocks = n * k * 2, rows * n * 2, n * k // 64
    assert tracker.peak().bytes == 2 * 4 * blocks + weight_bytes + out_bytes  # all alive at once
    del out
