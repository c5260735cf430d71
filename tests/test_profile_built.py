"""runner.profile_built: profile a model you built, with your optimizer and batch (what train uses)."""

import pytest
import torch

from membench import runner
from membench.backbones.tiny import tiny_overrides
from membench.errors import UserError


def _built():
    torch.manual_seed(0)
    with runner.build_device("cpu"):
        base, model, family, config, _cfg = runner.build("bert-base", "lora", device="cpu",
                                                         overrides=tiny_overrides("bert", layers=2))
    batch = family.make_batch(config, 2, 8, torch.Generator().manual_seed(0))
    return base, model, family, config, batch


def test_rows_and_optimizer_are_the_callers():
    base, model, family, config, batch = _built()
    sgd = runner.profile_built(model, batch, family=family, base=base, device="cpu", name="tiny-bert",
                               method="lora", optimizer=lambda ps: torch.optim.SGD(ps, lr=0.0))
    assert [r.name for r in sgd.layers][:3] == ["embeddings", "layers.0", "layers.1"]
    assert sgd.optimizer_bytes == 0 and sgd.optimizer == "SGD"  # SGD without momentum keeps no state
    adam = runner.profile_built(model, batch, family=family, base=base, device="cpu", name="tiny-bert",
                                method="lora")
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    assert adam.optimizer_bytes == 2 * adam.trainable_param_bytes + 4 * n_tensors  # exp_avg, exp_avg_sq, step
    assert (adam.batch_size, adam.seq_len, adam.model, adam.device) == (2, 8, "tiny-bert", "cpu")
    assert adam.activation_bytes == sgd.activation_bytes > 0


def test_fake_is_refused():
    base, model, family, config, batch = _built()
    with pytest.raises(UserError, match="real tensors"):
        runner.profile_built(model, batch, family=family, device="fake", name="x", method="lora")
