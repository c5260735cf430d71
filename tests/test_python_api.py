"""The Python API as a user meets it: real signatures and docstrings, the loss it used, the rows named."""

from __future__ import annotations

import inspect
import subprocess
import sys

import torch
from torch import nn


def test_signatures_and_docstrings_are_the_real_ones():
    import membench

    sig = inspect.signature(membench.profile_module)
    assert list(sig.parameters)[:2] == ["module", "batch"] and "loss_fn" in sig.parameters
    assert "pseudo-loss" in membench.profile_module.__doc__ and "first module" in membench.profile_module.__doc__
    assert {"batch_size", "seq_len", "image_size", "target", "gpu"} <= set(inspect.signature(membench.profile).parameters)


def test_import_membench_is_still_torch_free():
    out = subprocess.run([sys.executable, "-c", "import sys, membench; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def test_a_plain_module_says_its_loss_was_a_pseudo_loss():
    from membench import profile_module

    r = profile_module(_mlp(), torch.randn(4, 8))
    assert r.loss_kind == "sum"
    r = profile_module(_mlp(), torch.randn(4, 8), loss_fn=lambda out: out.pow(2).mean())
    assert r.loss_kind == "loss_fn"


def test_named_rows_stay_even_when_they_save_nothing():
    """Rows '0'...'4' of a Sequential: the Linears' inputs are charged to the ReLUs before them (first saver);
    with layers= every row you name is kept, 0 B included, in your order."""
    from membench import profile_module

    model = _mlp()
    names = {m: f"{type(m).__name__.lower()}{i}" for i, m in enumerate(model)}
    r = profile_module(model, torch.randn(4, 8), layers=names)
    assert [row.name for row in r.layers] == list(names.values())
    assert any(row.activation_bytes == 0 for row in r.layers)


def test_run_table_says_how_tensors_are_charged(cli):
    from membench.backbones.tiny import tiny

    model, ov = tiny("opt", layers=1)
    args = ["run", "-m", model, "-b", "1", "-s", "8"] + [a for k, v in ov.items() for a in ("--override", f"{k}={v}")]
    code, out, err = cli(*args)
    assert code == 0, err
    assert "first module that saves it" in " ".join(out.split())


def test_no_third_party_deprecation_noise_at_the_api():
    import warnings

    from membench import profile
    from membench.backbones.tiny import tiny

    model, ov = tiny("opt", layers=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        profile(model, "lora+ckpt", batch_size=1, seq_len=8, device="fake", overrides=ov)
    noisy = [w for w in seen if issubclass(w.category, FutureWarning | DeprecationWarning)]
    assert not noisy, [str(w.message) for w in noisy]
