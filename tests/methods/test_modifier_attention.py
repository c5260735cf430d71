"""Methods and modifiers change what is kept, never how attention is called.

On fake tensors transformers cannot read a padding mask, so it keeps a dense [b, 1, q, k] mask that
the real run drops (membench.backbones.fake_branches answers it as the real run does). Without that, a
wrapper that changes how the model is called could flip SDPA from `is_causal` to an explicit mask,
and a CUDA target from flash to the memory-efficient kernel: `lora+chunkloss` on Llama once did
(its predicted peak rose by 15% where the modifier should lower it), and BART's decoder always did.

- every family x method/modifier: the fake run calls SDPA as the real CPU run (mask, causal flag, lengths);
- on the CUDA target: a modifier's calls pick the plain run's kernels.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from membench import profile
from membench.backbones import FAMILIES
from membench.backbones.tiny import FAMILY_MODELS, text_seq, tiny_overrides
from membench.gpu.emulation import CudaRouting

TEXT = sorted(f for f in FAMILY_MODELS if FAMILIES[f].modality == "text")
LM = sorted(f for f, fam in FAMILIES.items() if fam.language_model)
# (family, method, options): each family's plain run, +ckpt, MEFT's ffn_chunks, and on LMs +chunkloss
RUNS = ([(f, m, {}) for f in sorted(FAMILY_MODELS) for m in ("lora", "lora+ckpt")]
        + [(f, "meft3", {"ffn_chunks": 4}) for f in sorted(FAMILY_MODELS)]
        + [(f, "prefix", {"num_virtual_tokens": 4}) for f in TEXT]
        + [(f, m, {}) for f in LM for m in ("lora+chunkloss", "full+chunkloss+ckpt")]
        + [(f, "meft1+chunkloss", {"ffn_chunks": 2}) for f in LM])


def _ids(runs):
    return [f"{f}-{m}" + "".join(f"-{k}={v}" for k, v in o.items()) for f, m, o in runs]


def _profile(family_name, method, options, **kwargs):
    return profile(FAMILY_MODELS[family_name], method, batch_size=2, seq_len=text_seq(family_name, 16),
                   overrides=tiny_overrides(family_name), method_options=options, **kwargs)


@contextlib.contextmanager
def _recording_sdpa():
    """Every F.scaled_dot_product_attention call of the step: (mask shape, is_causal, q length, k length)."""
    original = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        calls.append((None if attn_mask is None else tuple(attn_mask.shape), bool(is_causal), q.shape[-2],
                      k.shape[-2]))
        return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        yield calls
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def _calls(family_name, method, options, device):
    with _recording_sdpa() as calls:
        _profile(family_name, method, options, device=device, target="cpu")
    return calls


@pytest.mark.parametrize("family_name, method, options", RUNS, ids=_ids(RUNS))
def test_fake_calls_attention_as_the_real_run(family_name, method, options):
    real = _calls(family_name, method, options, "cpu")
    assert real, "no SDPA call recorded: the comparison would pass vacuously"
    assert _calls(family_name, method, options, "fake") == real


def test_without_the_mask_answers_fake_tensors_keep_a_mask_the_real_run_drops(monkeypatch):
    """Negative control: the comparison above fails when the shortcuts are not answered (BART's decoder)."""
    from membench.backbones import fake_branches

    real = _calls("bart", "lora", {}, "cpu")
    monkeypatch.setattr(fake_branches, "unpadded_batch", contextlib.nullcontext)
    fake = _calls("bart", "lora", {}, "fake")
    assert (None, True, 16, 16) in real and (None, True, 16, 16) not in fake


def _kernels(monkeypatch, family_name, method, options):
    """The kernel of each SDPA call in the first step on the CUDA target (bf16, A100: flash where allowed)."""
    kernels = []
    original = CudaRouting.sdpa

    def recording(self, *args, **kwargs):
        before = dict(self.choices)
        out = original(self, *args, **kwargs)
        kernels.extend(k for k, n in self.choices.items() if n != before.get(k, 0))
        return out

    monkeypatch.setattr(CudaRouting, "sdpa", recording)
    _profile(family_name, method, options, device="fake", target="cuda", gpu="a100-80gb", dtype="bf16")
    monkeypatch.setattr(CudaRouting, "sdpa", original)
    return set(kernels)


MODIFIED = [(f, m, o) for f, m, o in RUNS if m not in ("lora", "prefix")]


@pytest.mark.parametrize("family_name, method, options", MODIFIED, ids=_ids(MODIFIED))
def test_a_modifier_runs_the_plain_runs_attention_kernel_on_a_gpu(monkeypatch, family_name, method, options):
    plain = _kernels(monkeypatch, family_name, "lora", {})
    assert plain == {"flash"}  # bf16 on an A100, no mask: flash, as a real run picks
    assert _kernels(monkeypatch, family_name, method, options) == plain
