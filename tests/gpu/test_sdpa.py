"""CUDA's SDPA backend choice as a pure function: a table over the rule edges, expected by hand."""

from __future__ import annotations

import pytest

from membench.gpu.sdpa import SdpaCall, SdpaEnv, choose_backend, reasons

SM = {"sm75": (7, 5), "sm80": (8, 0), "sm86": (8, 6), "sm90": (9, 0)}


def call(dtype="bf16", d=64, mask=False, p=0.0, grad=True, causal=False, sq=512, sk=512, **kw) -> SdpaCall:
    dt = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64"}[dtype]
    return SdpaCall(dtype=dt, batch=16, heads_q=12, heads_kv=12, seq_q=sq, seq_k=sk, head_dim_qk=d, head_dim_v=d,
                    has_mask=mask, dropout_p=p, is_causal=causal, requires_grad=grad, **kw)


def env(sm: str, cudnn_first=False, **kw) -> SdpaEnv:
    major, minor = SM[sm]
    return SdpaEnv(major, minor, prefer_cudnn=cudnn_first, **kw)


# (case, call kwargs, expected backend per GPU: sm75, sm80, sm86, sm90 (flash first), sm90 (cuDNN first))
TABLE = [
    ("fp32 d64", dict(dtype="fp32"), ("efficient",) * 5),
    ("fp32 d64 dropout", dict(dtype="fp32", p=0.1), ("efficient",) * 5),
    ("fp32 d64 mask+dropout", dict(dtype="fp32", mask=True, p=0.1), ("efficient",) * 5),
    ("fp32 d66 (not a multiple of 4)", dict(dtype="fp32", d=66), ("efficient", "math", "math", "math", "math")),
    ("fp64", dict(dtype="fp64"), ("math",) * 5),
    ("bf16 d64", dict(), ("math", "flash", "flash", "flash", "cudnn")),
    ("bf16 d64 dropout 0.1", dict(p=0.1), ("math", "flash", "flash", "flash", "flash")),
    ("bf16 d64 dropout 0.125 (k/16)", dict(p=0.125), ("math", "flash", "flash", "flash", "cudnn")),
    ("bf16 d64 mask", dict(mask=True), ("math", "efficient", "efficient", "efficient", "cudnn")),
    ("bf16 d64 mask+dropout", dict(mask=True, p=0.1), ("math", "efficient", "efficient", "efficient", "efficient")),
    ("bf16 d128", dict(d=128), ("math", "flash", "flash", "flash", "cudnn")),
    ("bf16 d128 mask", dict(d=128, mask=True), ("math", "efficient", "efficient", "efficient", "cudnn")),
    ("bf16 d256 dropout (training)", dict(d=256, p=0.1), ("math", "flash", "efficient", "flash", "flash")),
    ("bf16 d256 no dropout (training)", dict(d=256), ("math", "flash", "flash", "flash", "flash")),
    ("bf16 d200 (training)", dict(d=200), ("math", "flash", "efficient", "flash", "flash")),
    ("bf16 d200 (inference)", dict(d=200, grad=False), ("math", "flash", "flash", "flash", "flash")),
    ("fp16 d64", dict(dtype="fp16"), ("efficient", "flash", "flash", "flash", "cudnn")),
    ("bf16 causal, square", dict(causal=True), ("math", "flash", "flash", "flash", "cudnn")),
    ("bf16 causal, 1 query", dict(causal=True, sq=1), ("math", "efficient", "efficient", "efficient", "cudnn")),
]


@pytest.mark.parametrize("case, kwargs, expected", TABLE, ids=[t[0] for t in TABLE])
def test_backend_table(case, kwargs, expected):
    envs = [env("sm75"), env("sm80"), env("sm86"), env("sm90"), env("sm90", cudnn_first=True)]
    got = tuple(choose_backend(call(**kwargs), e) for e in envs)
    assert got == expected, case


def test_reasons_name_the_rule():
    r = reasons(call(dtype="fp32"), env("sm80"))
    assert list(r) == ["flash", "efficient", "math", "cudnn"]
    assert r["flash"] == "flash needs fp16/bf16" and r["efficient"] is None
    assert "sm80" in reasons(call(), env("sm75"))["flash"]
    assert "1/16" in reasons(call(p=0.1), env("sm90", cudnn_first=True))["cudnn"]
    assert "attn_mask" in reasons(call(mask=True), env("sm80"))["flash"]
    # head dim 256: cuDNN 9.19 stops at 128; cuDNN above 9.22 on sm90 takes up to 256
    assert "<= 128" in reasons(call(d=256), env("sm90", cudnn_first=True))["cudnn"]
    assert choose_backend(call(d=256), env("sm90", cudnn_first=True, cudnn_version=92300)) == "cudnn"


def test_enabled_backends_and_alignment():
    assert choose_backend(call(), env("sm80", enabled=frozenset({"efficient", "math"}))) == "efficient"
    assert choose_backend(call(), env("sm80", enabled=frozenset({"math"}))) == "math"
    with pytest.raises(ValueError, match="no SDPA backend"):
        choose_backend(call(dtype="fp64"), env("sm80", enabled=frozenset({"flash", "efficient"})))
    # GPT-2's fused qkv: k and v start 1536 B into the storage; bf16 needs 16-byte alignment on sm80
    assert choose_backend(call(mask=True, offset_bytes=(0, 1536, 3072)), env("sm80")) == "efficient"
    assert choose_backend(call(mask=True, offset_bytes=(0, 1538, 3076)), env("sm80")) == "math"
    # grouped-query attention only with enable_gqa
    gqa = dict(heads_q=32, heads_kv=8)
    base = dict(dtype="bfloat16", batch=1, seq_q=64, seq_k=64, head_dim_qk=128, head_dim_v=128)
    assert choose_backend(SdpaCall(**base, **gqa, enable_gqa=True), env("sm80")) == "flash"
    assert choose_backend(SdpaCall(**base, **gqa), env("sm80")) == "math"
