"""What a GPU will show, predicted on a machine without one (and checked on one).

    specs.py      the GPU table: compute capability, memory, cuBLAS workspace, CUDA context
    sdpa.py       which SDPA kernel CUDA picks: a pure function of the call and the GPU
    emulation.py  route ops to their CUDA kernels on fake tensors (saved tensors as on CUDA)  [torch]
    allocator.py  a model of PyTorch's CUDA caching allocator
    predict.py    replay a step's allocations through it: peaks per phase, as on the GPU (PredictedCuda)

Everything but emulation.py imports no torch.
"""
