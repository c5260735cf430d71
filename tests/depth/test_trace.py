"""Allocation traces at any depth from shallow copies (membench/depth/trace.py): exact where they align, refused
where they do not."""

from __future__ import annotations

import dataclasses

import pytest

from membench.backbones import FAMILIES
from membench.backbones.tiny import tiny
from membench.depth.trace import LEARN, NotAligned, fit_depth
from membench.gpu.predict import predict
from membench.runner import allocation_trace
from membench.spec import RunSpec

SHALLOW = 2  # the base depth; the rules learn from SHALLOW + 1 .. + LEARN and are checked on one more
DEEP = 8  # the depth synthesized and compared with a real trace


def traces(family: str, method: str, depths, **kw) -> dict:
    name, ov = tiny(family)
    out = {}
    for depth in depths:
        layers = {k: depth for k in _layer_keys(family)}
        seq = None if FAMILIES[family].modality == "image" else 8
        spec = RunSpec(model=name, overrides={**ov, **layers}, method=method, batch_size=2, seq_len=seq,
                       device="fake", **kw).validate()
        out[depth] = allocation_trace(spec)
    return out


def _layer_keys(family: str) -> list[str]:
    return {"bart": ["encoder_layers", "decoder_layers"]}.get(family, ["num_hidden_layers"])


@pytest.mark.parametrize("family, method, kw", [
    ("llama", "lora", {}), ("llama", "lora+ckpt", {}), ("opt", "full", {}), ("opt", "meft3", {}),
    ("bert", "lora", {}), ("llama", "full", {"dtype": "bf16"}), ("gpt2", "lora", {}), ("vit", "lora", {}),
    ("opt", "lora", {"grad_accum": 2}), ("roberta", "houlsby", {}), ("opt", "full+chunkloss", {}),
    ("llama", "lora", {"quant": "nf4", "kbit_ckpt": False, "dtype": "bf16"}),
])
def test_a_deep_trace_is_synthesized_exactly(family, method, kw):
    """Traces at depths 2..6 give depth 8's trace event for event (sizes, frees tied to their allocations, kernel
    allocations, the weights before the step), and so every figure of its allocator replay."""
    if kw.get("quant"):
        pytest.importorskip("bitsandbytes")
    got = traces(family, method, [*range(SHALLOW, SHALLOW + LEARN + 2), DEEP], **kw)
    model = fit_depth({d: got[d][0] for d in range(SHALLOW, SHALLOW + LEARN + 2)})
    real, phases = got[DEEP]
    synthesized = model.trace(DEEP)
    assert dataclasses.asdict(synthesized) == dataclasses.asdict(real)
    assert predict(synthesized, phases=phases) == predict(real, phases=phases)


@pytest.mark.parametrize("family, method, kw", [
    # refused today (a run profiles the whole model): the autocast cache's frees, prefix tuning's per-depth
    # prefixes (one tensor whose size grows with depth), two stacks that grow together, Adafactor's state
    ("opt", "lora", {"precision": "bf16-mixed"}), ("opt", "prefix", {}), ("bart", "lora", {}),
    ("opt", "full", {"optimizer": "adafactor"}),
])
def test_a_deep_trace_is_exact_or_refused(family, method, kw):
    """Never wrong: wherever the shallow traces align, depth 8 comes out exactly; elsewhere they are refused (a
    run then profiles the whole model)."""
    got = traces(family, method, [*range(SHALLOW, SHALLOW + LEARN + 2), DEEP], **kw)
    try:
        model = fit_depth({d: got[d][0] for d in range(SHALLOW, SHALLOW + LEARN + 2)})
    except NotAligned:
        return
    assert dataclasses.asdict(model.trace(DEEP)) == dataclasses.asdict(got[DEEP][0])


def test_traces_that_do_not_repeat_are_refused():
    """Negative controls: a depth whose trace was changed by one byte, and depths of different models."""
    got = traces("llama", "lora", range(SHALLOW, SHALLOW + LEARN + 2))
    bent = {d: t for d, (t, _p) in got.items()}
    changed = dataclasses.replace(bent[SHALLOW + 2], sizes=list(bent[SHALLOW + 2].sizes))
    changed.sizes[len(changed.sizes) // 2] += 1
    with pytest.raises(NotAligned):
        fit_depth({**bent, SHALLOW + 2: changed})
    other = traces("llama", "full", [SHALLOW + 3])[SHALLOW + 3][0]
    with pytest.raises(NotAligned):
        fit_depth({**bent, SHALLOW + 3: other})
    with pytest.raises(NotAligned):
        fit_depth({d: bent[d] for d in range(SHALLOW, SHALLOW + LEARN + 1)})  # one depth short


def test_layers_that_differ_in_pairs_do_not_align_or_are_exact():
    """MEFT3 checkpointing every second layer: the layers differ in pairs, so one more layer is not one more copy
    of the same events. Either the traces are refused, or what they give is exact."""
    kw = {"method_options": {"checkpoint_every": 2}}
    got = traces("opt", "meft3", [*range(SHALLOW, SHALLOW + LEARN + 2), DEEP], **kw)
    try:
        model = fit_depth({d: got[d][0] for d in range(SHALLOW, SHALLOW + LEARN + 2)})
    except NotAligned:
        return
    assert dataclasses.asdict(model.trace(DEEP)) == dataclasses.asdict(got[DEEP][0])
