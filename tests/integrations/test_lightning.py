"""The Lightning callback (membench.integrations.lightning): one real step of a LightningModule run, on CPU."""

from __future__ import annotations

import pytest
import torch

from membench import profile_module

from .test_hf import _Data, _model

L = pytest.importorskip("lightning")


class _Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = _model()

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


def _fit(tmp_path, callbacks, **kw):
    module = _Module()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                        default_root_dir=str(tmp_path), **kw)
    torch.manual_seed(0)
    trainer.fit(module, torch.utils.data.DataLoader(_Data(), batch_size=2))
    return module, trainer


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_the_callback_profiles_the_training_step(tmp_path, precision):
    from membench.integrations.lightning import MembenchCallback

    callback = MembenchCallback(tmp_path / "step.json", name="tiny-bert")
    _, trainer = _fit(tmp_path, [callback], precision=precision)
    assert trainer.global_step == 2
    r = callback.result
    assert r.precision == precision and r.model == "tiny-bert" and (tmp_path / "step.json").exists()
    batch = torch.utils.data.default_collate([_Data()[i] for i in range(2)])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        direct = profile_module(_model(), batch, device="cpu")
    layers = {k: v for k, v in r.layer_bytes.items() if k.startswith("layer.")}
    assert layers and layers == {k: v for k, v in direct.layer_bytes.items() if k.startswith("layer.")}


def test_the_callback_leaves_training_as_it_was(tmp_path):
    from membench.integrations.lightning import MembenchCallback

    plain, _ = _fit(tmp_path, [])
    profiled, _ = _fit(tmp_path, [MembenchCallback(None)])
    a, b = plain.state_dict(), profiled.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
