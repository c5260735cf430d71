"""ViT: the paper's image classification. Patches + [CLS] as the sequence, every method that makes sense."""

from __future__ import annotations

import pytest

from membench import profile
from membench.backbones.tiny import tiny
from membench.errors import UserError

METHODS = ["full", "lora", "houlsby", "pfeiffer", "bitfit", "ia3", "full+ckpt", "lora+ckpt", "meft1", "meft2", "meft3"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_profiles_and_fake_equals_cpu(method):
    model, ov = tiny("vit", layers=2)
    fake = profile(model, method, batch_size=2, device="fake", target="cpu", overrides=ov)
    cpu = profile(model, method, batch_size=2, device="cpu", overrides=ov)
    assert fake.seq_len == cpu.seq_len == (16 // 4) ** 2 + 1  # 16 patches + [CLS]
    assert fake.layer_bytes == cpu.layer_bytes and fake.activation_bytes > 0
    assert fake.input_bytes == cpu.input_bytes >= 2 * 3 * 16 * 16 * 4  # the pixels, an input, not an activation
    if not method.startswith("full"):
        assert 0 < cpu.num_trainable_params < cpu.num_params


def test_vit_base_sequence_and_layer_bytes_follow_the_image_size():
    """vit-base at 224 px: 197 tokens; at 384 px: 577. A layer's saved bytes grow with the tokens."""
    a = profile("vit-base", "full", batch_size=2, device="fake", overrides={"num_hidden_layers": 2})
    b = profile("vit-base", "full", batch_size=2, image_size=384, device="fake", overrides={"num_hidden_layers": 2})
    assert (a.seq_len, b.seq_len) == (197, 577)
    assert b.layer_bytes["layers.1"] > 2.9 * a.layer_bytes["layers.1"]
    assert a.predicted_cuda["sdpa_backends"] == {"efficient": 2}  # fp32 on an A100


def test_refusals():
    model, ov = tiny("vit", layers=1)
    with pytest.raises(UserError, match="is an image model: every layer sees .* = 17 tokens; set --image-size"):
        profile(model, "full", batch_size=2, seq_len=64, device="fake", overrides=ov)
    with pytest.raises(UserError, match="not a multiple of the patch size 4"):
        profile(model, "full", batch_size=2, image_size=18, device="fake", overrides=ov)
    with pytest.raises(UserError, match="--image-size applies to image models; opt-125m reads text"):
        profile("opt-125m", "full", batch_size=2, seq_len=8, image_size=224, device="fake")
    with pytest.raises(UserError, match="prefix tuning prepends key/value prefixes to token sequences"):
        profile(model, "prefix", batch_size=2, device="fake", overrides=ov)


def test_cli(cli):
    code, out, err = cli("run", "-m", "vit-base", "--method", "meft3", "-b", "2", "--image-size", "64",
                         "--override", "num_hidden_layers=2")
    assert code == 0, err
    assert "s17" in out  # (64 / 16)^2 + 1
    code, _out, err = cli("run", "-m", "vit-base", "-s", "512")
    assert code == 2 and "is an image model" in err and len(err.strip().splitlines()) == 1
    code, _out, err = cli("run", "-m", "bert-base", "--image-size", "224")
    assert code == 2 and "--image-size applies to image models" in err
    code, out, _err = cli("list")
    assert "vit-base" in out and "197 (224px)" in out
    code, _out, err = cli("train", "--pretrained", ".", "--model", "vit-base")
    assert code == 2
