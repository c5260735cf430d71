"""Which kernel `F.scaled_dot_product_attention` runs on a CUDA GPU: a pure function (no torch).

PyTorch walks a priority list and takes the first backend whose checks pass
(aten/src/ATen/native/transformers/cuda/sdp_utils.cpp, `select_sdp_backend`):

    default order             flash -> efficient -> math -> cudnn
    sm90 / sm100, torch>=2.9  cudnn -> flash -> efficient -> math   (cuDNN >= 9.15 installed)

The checks below restate that file's rules for dense (non-nested) inputs, each
with the reason a user would want to read. What each kernel saves for backward:

    flash       q, k, v, out, logsumexp fp32 [B, H, L]
    efficient   q, k, v, out, logsumexp fp32 [B, H, ceil(L/32)*32], philox seed/offset (host)
    cudnn       q, k, v, out, logsumexp fp32 [B, H, L, 1], philox seed/offset
    math        the s x s probabilities (and with dropout its mask): it is plain autograd
"""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("flash", "efficient", "math", "cudnn")
DEFAULT_ORDER = ("flash", "efficient", "math", "cudnn")
CUDNN_FIRST_ORDER = ("cudnn", "flash", "efficient", "math")
LOW_PRECISION = ("float16", "bfloat16")
DEFAULT_CUDNN_VERSION = 91900  # what torch 2.11's CUDA 13 wheels ship (9.19)


@dataclass(frozen=True)
class SdpaCall:
    """The facts of one SDPA call that the backend checks read (shapes as [B, H, L, E])."""

    dtype: str  # "float32", "bfloat16", "float16", "float64"
    batch: int
    heads_q: int
    heads_kv: int
    seq_q: int
    seq_k: int
    head_dim_qk: int
    head_dim_v: int
    has_mask: bool = False
    dropout_p: float = 0.0
    is_causal: bool = False
    requires_grad: bool = True  # grad mode on and q, k or v requires grad
    enable_gqa: bool = False
    dims: int = 4
    last_dim_contiguous: bool = True  # q, k and v all have stride(-1) == 1
    offset_bytes: tuple[int, int, int] = (0, 0, 0)  # storage_offset * element_size of q, k, v


@dataclass(frozen=True)
class SdpaEnv:
    """The GPU and the switches: compute capability, enabled backends, cuDNN preference."""

    major: int
    minor: int
    enabled: frozenset[str] = field(default_factory=lambda: frozenset(BACKENDS))
    prefer_cudnn: bool = False
    cudnn_version: int = DEFAULT_CUDNN_VERSION

    @property
    def order(self) -> tuple[str, ...]:
        return CUDNN_FIRST_ORDER if self.prefer_cudnn else DEFAULT_ORDER


def _sm(env: SdpaEnv, lo: tuple[int, int], hi: tuple[int, int]) -> bool:
    return lo <= (env.major, env.minor) <= hi


def _element_size(dtype: str) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}.get(dtype, 4)


def _dense_common(call: SdpaCall, *, gqa: bool) -> str | None:
    if call.dims != 4:
        return "inputs must be 4-D [B, H, L, E]"
    if call.seq_q <= 0 or call.seq_k <= 0:
        return "zero-length sequence"
    grouped_ok = call.enable_gqa and gqa and call.heads_kv > 0 and call.heads_q % call.heads_kv == 0
    if call.heads_q != call.heads_kv and not grouped_ok:
        return "query and key/value head counts differ (needs enable_gqa and a supported ratio)"
    return None


def _min_gemm_alignment(call: SdpaCall, env: SdpaEnv) -> int:
    is_half = call.dtype in LOW_PRECISION
    use_tc = env.major >= 8 or (env.major >= 7 and is_half)
    mn = 4 if env.major >= 8 else 1
    if use_tc:
        mn = max(mn, 128 // (16 if is_half else 32))
    return mn


def why_not_flash(call: SdpaCall, env: SdpaEnv) -> str | None:
    """None if flash attention can run this call, else the first reason it cannot."""
    if "flash" not in env.enabled:
        return "flash disabled"
    if call.dims != 4:
        return "inputs must be 4-D"
    if call.has_mask:
        return "flash takes no attn_mask (only the causal flag)"
    if not (call.head_dim_qk == call.head_dim_v and call.head_dim_qk <= 256):
        return "head dims must be equal and <= 256"
    if not _sm(env, (8, 0), (12, 1)):
        return f"flash needs sm80..sm121, this GPU is sm{env.major}{env.minor}"
    if call.requires_grad and (_sm(env, (8, 6), (8, 9)) or _sm(env, (12, 0), (12, 1))):
        d = call.head_dim_qk
        if not (d <= 192 or (call.dropout_p == 0.0 and d > 224)):
            return "training with head dim in (192, 224] (or (224, 256] with dropout) is not supported here"
    if call.is_causal and call.seq_q != call.seq_k:
        return "causal flag with seq_q != seq_k"
    if call.dtype not in LOW_PRECISION:
        return "flash needs fp16/bf16"
    if env.major < 8 and call.dtype != "float16":
        return "bf16 needs sm80+"
    reason = _dense_common(call, gqa=True)
    if reason:
        return reason
    if not call.last_dim_contiguous:
        return "last dimension must have stride 1"
    return None


def why_not_efficient(call: SdpaCall, env: SdpaEnv) -> str | None:
    """None if the memory-efficient kernel can run this call, else why not."""
    if "efficient" not in env.enabled:
        return "efficient disabled"
    if not _sm(env, (5, 0), (12, 1)):
        return f"memory-efficient attention needs sm50..sm121, this GPU is sm{env.major}{env.minor}"
    if call.dims != 4:
        return "inputs must be 4-D"
    align = _min_gemm_alignment(call, env)
    if not (call.head_dim_qk > 0 and call.head_dim_v > 0 and call.head_dim_qk % align == 0
            and call.head_dim_v % align == 0):
        return f"head dims must be multiples of {align}"
    if env.major >= 8:
        align_bytes = align * _element_size(call.dtype)
        if any(off % align_bytes for off in call.offset_bytes):
            return f"q/k/v storage offsets must be {align_bytes}-byte aligned"
    reason = _dense_common(call, gqa=True)
    if reason:
        return reason
    if not call.last_dim_contiguous:
        return "last dimension must have stride 1"
    allowed = ("float16", "float32", "bfloat16") if env.major >= 8 else ("float16", "float32")
    if call.dtype not in allowed:
        return f"{call.dtype} not supported by memory-efficient attention on sm{env.major}{env.minor}"
    return None


def why_not_cudnn(call: SdpaCall, env: SdpaEnv) -> str | None:
    """None if cuDNN attention can run this call, else why not."""
    if "cudnn" not in env.enabled:
        return "cudnn disabled"
    v = env.cudnn_version
    if v < 90000:
        return "cuDNN attention needs cuDNN >= 9"
    if call.dropout_p > 0.0 and 91100 < v < 91400:
        return "cuDNN 9.11-9.13 has no dropout in SDPA"
    if call.dims != 4:
        return "inputs must be 4-D"
    if call.dtype not in LOW_PRECISION or (env.major < 8 and call.dtype != "float16"):
        return "cuDNN attention needs fp16/bf16"
    if not _sm(env, (8, 0), (12, 1)):
        return f"cuDNN attention needs sm80..sm121, this GPU is sm{env.major}{env.minor}"
    if call.dropout_p * 16.0 != int(call.dropout_p * 16.0):
        return "cuDNN dropout must be a multiple of 1/16"
    reason = _dense_common(call, gqa=True)
    if reason:
        return reason
    if not call.last_dim_contiguous:
        return "last dimension must have stride 1"
    if call.batch > 65535 or call.heads_q > 65535:
        return "batch or heads > 65535"
    sm90_or_10x = (env.major == 9 and env.minor == 0) or env.major == 10
    limit = 256 if (sm90_or_10x and v > 92200) else 128
    if sm90_or_10x and v >= 91100 and call.head_dim_qk == 192 and call.head_dim_v == 128:
        limit = max(limit, 192)
    if call.head_dim_qk > limit or call.head_dim_v > limit:
        return f"head dim must be <= {limit}"
    if call.head_dim_qk % 8 or call.head_dim_v % 8:
        return "head dim must be a multiple of 8"
    if call.seq_k == 1:
        return "key/value sequence length 1"
    if call.dropout_p != 0.0 and call.seq_q == 1:
        return "query sequence length 1 with dropout"
    if call.requires_grad and sm90_or_10x and v > 92200:
        d, dv = call.head_dim_qk, call.head_dim_v
        if not ((d <= 128 and dv <= 128) or (d, dv) in ((192, 128), (256, 256))):
            return "no cuDNN backward for these head dims"
    return None


_CHECKS = {"flash": why_not_flash, "efficient": why_not_efficient, "cudnn": why_not_cudnn}


def reasons(call: SdpaCall, env: SdpaEnv) -> dict[str, str | None]:
    """Per backend in priority order: None if usable, else the reason it is not."""
    out = {}
    for backend in env.order:
        if backend == "math":
            out[backend] = None if "math" in env.enabled else "math disabled"
        else:
            out[backend] = _CHECKS[backend](call, env)
    return out


def choose_backend(call: SdpaCall, env: SdpaEnv) -> str:
    """The backend PyTorch picks on this GPU: "flash", "efficient", "cudnn" or "math".

    Raises ValueError when every backend is excluded (PyTorch: "No available kernel")."""
    for backend, reason in reasons(call, env).items():
        if reason is None:
            return backend
    raise ValueError("no SDPA backend can run this call (all enabled backends refuse it)")
