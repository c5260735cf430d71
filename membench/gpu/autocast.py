"""CUDA's autocast policy, run on fake CPU tensors: mixed precision saves what a GPU saves.

Autocast is a dispatch key that sits above autograd: its kernel casts an op's inputs, then calls the op
below itself, so autograd saves the cast tensors. CPU and CUDA autocast cast different ops:

    torch's autocast_mode.h     CUDA                               CPU autocast (torch.autocast("cpu"))
    lower_precision_fp          inputs -> bf16/fp16 (linear, mm,   the common ones too (linear, mm, bmm,
                                einsum, mv, addmv, flash attn...)  matmul, SDPA); not einsum, mv, addmv...
    fp32                        inputs -> fp32 (layer_norm,        nothing (runs in the input dtype)
                                rms_norm, exp, log, pow, mse_loss)
    fp32_set_opt_dtype          dtype=fp32 (softmax, log_softmax,  nothing
                                sum, cumsum, prod)
    promote                     the widest input type (addcmul)    nothing
    (not listed for CUDA)       nothing                            cat/stack promote; cross_entropy_loss,
                                                                   linalg, fft in fp32

A fake run enables CPU autocast (the only one a CPU build of torch can run) and, while `CudaAutocastPolicy`
is entered, puts Python kernels on the AutocastCPU key for every op whose CUDA policy differs: the CUDA
policy for ops CUDA casts, and a pass-through for ops only the CPU casts (a composite op is decomposed,
so its parts meet autocast as on CUDA). Ops both cast to low precision keep the C++ CPU kernel and its
weight cache: a trainable fp32 weight is cast once per autocast region; a frozen one at every use.
The policy is read from the installed torch: the op classes from its shipped header, the ops CUDA autocast
registers from its dispatcher, so it follows the torch it runs with.

Not modelled: the cast cache of the ops only CUDA casts to low precision (einsum, mv, addmv, addr,
chain_matmul, linalg_multi_dot): a trainable leaf weight through one of them is cast at every use here, once
per region on a GPU. No shipped family sends a weight through them.
"""

from __future__ import annotations

import functools
import os
import re
import warnings

import torch

_KEY = torch._C.DispatchKey.AutocastCPU
_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd
POLICIES = ("lower", "fp32", "fp32_set_opt_dtype", "promote", "banned")
_HEADER_LISTS = {"AT_FORALL_LOWER_PRECISION_FP": "lower", "AT_FORALL_FP32": "fp32",
                 "AT_FORALL_FP32_SET_OPT_DTYPE": "fp32_set_opt_dtype", "AT_FORALL_PROMOTE": "promote"}
# registered outside the header's lists (autocast_mode.cpp): norm's fp32_append_dtype, banned ops
_SPECIAL = {"aten::norm.Scalar": "fp32", "aten::norm.ScalarOpt_dim": "fp32",
            "aten::cudnn_convolution": "lower", "aten::cudnn_convolution_transpose": "lower"}


def _header() -> str:
    path = os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "autocast_mode.h")
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:  # pragma: no cover - every torch wheel ships its headers
        raise RuntimeError(f"cannot read torch's autocast op lists ({path}): {exc}") from None


@functools.cache
def cuda_policy() -> dict[str, str]:
    """{'aten::layer_norm': 'fp32', 'aten::sum.dim_IntList': 'fp32_set_opt_dtype', ...}: every op CUDA autocast
    registers, with its cast policy ('banned': binary_cross_entropy, which CUDA autocast refuses)."""
    src = _header()
    listed: dict[str, str] = {}
    for macro, policy in _HEADER_LISTS.items():
        m = re.search(rf"#define {macro}\(_\)((?:[^\n]*\\\n)*[^\n]*)", src)
        if m is None:  # pragma: no cover - a torch that renamed its lists
            raise RuntimeError(f"torch's autocast_mode.h has no {macro}: the CUDA policy cannot be read")
        for name, overload in re.findall(r"_\((\w+)(?:,\s*(\w+))?\)", m.group(1)):
            listed[f"aten::{name}" + (f".{overload}" if overload else "")] = policy
    registered = set(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA"))
    policy = {}
    for op in registered:
        p = listed.get(op) or _SPECIAL.get(op) or ("banned" if op.startswith("aten::binary_cross_entropy") else None)
        if p is not None:
            policy[op] = p
    return policy


@functools.cache
def cpu_registered() -> frozenset[str]:
    return frozenset(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCPU"))


def overrides() -> dict[str, str]:
    """The AutocastCPU kernels that make CPU autocast follow CUDA's policy: op -> policy, or 'pass' (CUDA
    does not cast the op). Ops both cast to low precision keep CPU's C++ kernel (and its weight cache)."""
    cuda, cpu = cuda_policy(), cpu_registered()
    out = {op: p for op, p in cuda.items() if not (p == "lower" and op in cpu)}
    out.update({op: "pass" for op in cpu if op not in cuda})
    return out


# ---- the kernels -------------------------------------------------------------------------------------------------


def _eligible(t) -> bool:
    """What CUDA autocast casts: a floating tensor that is not fp64 (the device is CUDA's, here the fake CPU)."""
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _map(value, fn):
    if isinstance(value, list | tuple):
        return type(value)(_map(v, fn) for v in value)
    return fn(value) if _eligible(value) else value


def _tensors(args, kwargs):
    for v in (*args, *kwargs.values()):
        if isinstance(v, list | tuple):
            yield from (t for t in v if _eligible(t))
        elif _eligible(v):
            yield v


def _below(op, args, kwargs):
    """Call `op` below the autocast key, as an autocast kernel does (its parts are not cast again)."""
    with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_KEY)):
        return op(*args, **kwargs)


def _kernel(op, policy: str):
    if policy == "pass":
        if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), _COMPOSITE):
            # CUDA autocast falls through: the composite's parts meet autocast (cross_entropy_loss ->
            # log_softmax in fp32 from the bf16 logits, nll_loss)
            return lambda *args, **kwargs: op._op_dk(_COMPOSITE, *args, **kwargs)
        return lambda *args, **kwargs: _below(op, args, kwargs)

    if policy == "banned":
        def run(*args, **kwargs):
            raise RuntimeError(f"{op.name()} is unsafe to autocast on CUDA (torch refuses it there): use "
                               "binary_cross_entropy_with_logits (BCEWithLogitsLoss)")
    elif policy == "lower":
        def run(*args, **kwargs):
            dtype = torch.get_autocast_dtype("cpu")
            cast = functools.partial(_cast, dtype=dtype)
            return _below(op, _map(args, cast), {k: _map(v, cast) for k, v in kwargs.items()})
    elif policy == "fp32":
        def run(*args, **kwargs):
            cast = functools.partial(_cast, dtype=torch.float32)
            return _below(op, _map(args, cast), {k: _map(v, cast) for k, v in kwargs.items()})
    elif policy == "fp32_set_opt_dtype":
        names = [a.name for a in op._schema.arguments]
        at = names.index("dtype")

        def run(*args, **kwargs):
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            given = args[at] if at < len(args) else kwargs.get("dtype")
            if _eligible(first) and given is None:  # CUDA sets the output dtype; explicit dtypes stay
                if at < len(args):
                    args = (*args[:at], torch.float32, *args[at + 1:])
                else:
                    kwargs = {**kwargs, "dtype": torch.float32}
            fused = half_to_float(op, args, kwargs)
            return fused if fused is not None else _below(op, args, kwargs)
    elif policy == "promote":
        def run(*args, **kwargs):
            dtypes = [t.dtype for t in _tensors(args, kwargs)]
            if not dtypes:
                return _below(op, args, kwargs)
            widest = functools.reduce(torch.promote_types, dtypes)
            cast = functools.partial(_cast, dtype=widest)
            return _below(op, _map(args, cast), {k: _map(v, cast) for k, v in kwargs.items()})
    else:  # pragma: no cover
        raise ValueError(policy)
    return run


_HALF_TO_FLOAT = {"aten::softmax.int": torch.ops.aten._softmax, "aten::log_softmax.int": torch.ops.aten._log_softmax}


def half_to_float(op, args, kwargs):
    """CUDA's (log_)softmax of an fp16 input into fp32 reads the fp16 input directly (`half_to_float`); the CPU
    composite first makes an fp32 copy of the input. The CUDA way, or None for any other call."""
    kernel = _HALF_TO_FLOAT.get(op.name() if hasattr(op, "name") else "")
    if kernel is None:
        return None
    x, dim = args[0], (args[1] if len(args) > 1 else kwargs.get("dim"))
    dtype = args[2] if len(args) > 2 else kwargs.get("dtype")
    if x.dtype != torch.float16 or dtype != torch.float32:
        return None
    with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_KEY)):
        return kernel(x, dim, True)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _op(name: str):
    qualified = name.removeprefix("aten::")
    base, _, overload = qualified.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


class CudaAutocastPolicy:
    """While entered (the whole step: a MEFT recompute re-enters autocast in backward), CPU autocast casts as
    CUDA autocast does. Enter it around `torch.autocast("cpu", dtype)` regions; outside them it changes
    nothing (the kernels run only where autocast is enabled). Its kernels are gone on exit."""

    def __init__(self):
        self.lib = None

    def __enter__(self):
        lib = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": on purpose
            for name, policy in sorted(overrides().items()):
                op = _op(name)
                lib.impl(op, _kernel(op, policy), "AutocastCPU")
        self.lib = lib
        return self

    def __exit__(self, *exc):
        if self.lib is not None:
            self.lib._destroy()
            self.lib = None
        return False
