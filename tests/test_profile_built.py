"""runner.profile_built: profile a model you built, with your optimizer and batch (what train uses)."""

import pytest
import torch

from membench import runner
from membench.backbones.tiny import tiny_overrides
from membench.errors import UserError
from membench.spec import RunSpec


def _built(device="cpu"):
    torch.manual_seed(0)
    built = runner.build(RunSpec(model="bert-base", method="lora", device=device,
                                 overrides=tiny_overrides("bert", layers=2)), inputs=False)
    batch = built.family.make_batch(built.config, 2, 8, torch.Generator().manual_seed(0))
    return built, batch


def test_rows_and_optimizer_are_the_callers():
    built, batch = _built()
    model = built.model
    sgd = runner.profile_built(built, batch, name="tiny-bert", optimizer=lambda ps: torch.optim.SGD(ps, lr=0.0))
    assert [r.name for r in sgd.layers][:3] == ["embeddings", "layers.0", "layers.1"]
    assert sgd.optimizer_bytes == 0 and sgd.optimizer == "SGD"  # SGD without momentum keeps no state
    adam = runner.profile_built(built, batch, name="tiny-bert")
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    assert adam.optimizer_bytes == 2 * adam.trainable_param_bytes + 4 * n_tensors  # exp_avg, exp_avg_sq, step
    assert (adam.batch_size, adam.seq_len, adam.model, adam.device) == (2, 8, "tiny-bert", "cpu")
    assert adam.activation_bytes == sgd.activation_bytes > 0


def test_fake_is_refused():
    built, batch = _built("fake")
    with pytest.raises(UserError, match="real tensors"):
        runner.profile_built(built, batch, name="x")
