"""Config parsing: dtype aliases, attention implementations, --override, --pretrained (offline)."""

from __future__ import annotations

import pytest
import torch

from membench import UserError, backbones, dtypes, profile
from membench.backbones.tiny import FAMILY_MODELS, tiny

# ---- dtypes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("alias", "canonical", "short", "torch_dtype"), [
    ("fp32", "float32", "fp32", torch.float32), ("float32", "float32", "fp32", torch.float32),
    ("bf16", "bfloat16", "bf16", torch.bfloat16), ("bfloat16", "bfloat16", "bf16", torch.bfloat16),
    ("fp16", "float16", "fp16", torch.float16), ("float16", "float16", "fp16", torch.float16),
    ("fp64", "float64", "fp64", torch.float64), ("float64", "float64", "fp64", torch.float64),
    ("BF16", "bfloat16", "bf16", torch.bfloat16), (" fp32 ", "float32", "fp32", torch.float32),
])
def test_dtype_aliases(alias, canonical, short, torch_dtype):
    assert dtypes.canonical(alias) == canonical
    assert dtypes.short(alias) == short
    assert dtypes.to_torch(alias) is torch_dtype


@pytest.mark.parametrize("bad", ["int8", "fp8", "", "float", "32"])
def test_dtype_unknown(bad):
    with pytest.raises(UserError, match="allowed: fp32/float32, bf16/bfloat16"):
        dtypes.canonical(bad)


@pytest.mark.parametrize("alias", ["float32", "bfloat16", "fp64"])
def test_result_dtype_is_short_whatever_the_alias(alias):
    model, ov = tiny("opt", layers=1)
    r = profile(model, "full", batch_size=1, seq_len=4, dtype=alias, device="fake", overrides=ov)
    assert r.dtype == dtypes.short(alias)
    assert r.param_bytes == r.num_params * dtypes.to_torch(alias).itemsize


def test_bf16_on_a_gpu_without_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    from membench.backends import CpuBackend, CudaBackend, Target

    gpu, cpu = CudaBackend(Target("cuda", measured=True)), CpuBackend(Target("cpu", measured=True))
    with pytest.raises(UserError, match="cannot run bf16"):
        gpu.check_device_dtype("bf16")
    gpu.check_device_dtype("fp16")  # fine
    cpu.check_device_dtype("bf16")  # the CPU runs every dtype


# ---- attention implementations -----------------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attn_is_applied(attn):
    cfg = backbones.make_config(backbones.get("bert-base"), attn=attn)
    assert cfg._attn_implementation == attn


@pytest.mark.parametrize("bad", ["flash", "flash_attention_2", "", "SDPA "])
def test_attn_unknown(bad):
    with pytest.raises(UserError, match="allowed: eager, sdpa"):
        backbones.make_config(backbones.get("bert-base"), attn=bad)


def test_eager_saves_the_attention_matrix_and_sdpa_does_not():
    model, ov = tiny("opt", layers=1)
    kw = dict(batch_size=2, device="fake", overrides=ov)
    short = {a: profile(model, "full", seq_len=16, attn=a, **kw).layer_bytes["layers.0"] for a in ("eager", "sdpa")}
    long = {a: profile(model, "full", seq_len=32, attn=a, **kw).layer_bytes["layers.0"] for a in ("eager", "sdpa")}
    # eager's s x s terms make it grow faster than linearly in s; it saves more than sdpa
    assert short["eager"] > short["sdpa"]
    assert long["eager"] - 2 * short["eager"] > long["sdpa"] - 2 * short["sdpa"]


# ---- overrides ---------------------------------------------------------------------------------


def test_parse_overrides_types():
    out = backbones.parse_overrides(["num_hidden_layers=3", "hidden_act=relu", "layer_norm_eps=1e-6",
                                     "tie_word_embeddings=false", " hidden_size = 64 "])
    assert out == {"num_hidden_layers": 3, "hidden_act": "relu", "layer_norm_eps": 1e-6,
                   "tie_word_embeddings": False, "hidden_size": 64}


@pytest.mark.parametrize("item", ["num_hidden_layers", "=3", "novalue"])
def test_parse_overrides_bad_syntax(item):
    with pytest.raises(UserError, match="override"):
        backbones.parse_overrides([item])


@pytest.mark.parametrize(("overrides", "match"), [
    ({"no_such_key": 1}, "unknown config key 'no_such_key'"),
    ({"num_hidden_layers": "x"}, "expected an integer"),
    ({"num_hidden_layers": 1.5}, "expected an integer"),
    ({"num_hidden_layers": True}, "expected an integer"),
    ({"num_hidden_layers": 0}, "positive integer"),
    ({"hidden_size": -8}, "positive integer"),
    ({"dropout": "tiny"}, "expected a number"),
    ({"tie_word_embeddings": 3}, "expected true or false"),
])
def test_override_errors(overrides, match):
    with pytest.raises(UserError, match=match):
        backbones.make_config(backbones.get("opt-125m"), overrides)


def test_unknown_key_suggests_size_keys():
    with pytest.raises(UserError) as exc:
        backbones.make_config(backbones.get("opt-125m"), {"num_layers": 3})
    msg = str(exc.value)
    assert "num_hidden_layers" in msg and "hidden_size" in msg and "ffn_dim" in msg
    assert "bos_token_id" not in msg and "layer_norm_elementwise_affine" not in msg


def test_override_applies_and_changes_memory():
    model, ov = tiny("opt", layers=2)
    base = profile(model, "full", batch_size=1, seq_len=8, device="fake", overrides=ov)
    deeper = profile(model, "full", batch_size=1, seq_len=8, device="fake", overrides={**ov, "num_hidden_layers": 3})
    assert [r.name for r in deeper.layers if r.name.startswith("layers.")] == ["layers.0", "layers.1", "layers.2"]
    assert deeper.layer_bytes["layers.2"] == base.layer_bytes["layers.1"]
    assert deeper.provenance["config"]["num_hidden_layers"] == 3
    assert deeper.overrides["num_hidden_layers"] == 3


def test_inconsistent_override_is_a_user_error():
    with pytest.raises(UserError, match="cannot build"):
        profile("opt-125m", "full", batch_size=1, seq_len=8, device="fake",
                overrides={**tiny("opt")[1], "hidden_size": 31})  # 2 heads


@pytest.mark.parametrize("name", sorted(FAMILY_MODELS.values()))
def test_shipped_configs_build(name):
    cfg = backbones.make_config(backbones.get(name))
    fam = backbones.family_for(cfg.model_type)
    assert fam.max_positions(cfg) > 0


# the published parameter counts (Meta's model cards; HF's num_parameters()) of the shipped Llama 2 configs
LLAMA_2 = {"llama-2-7b": 6_738_415_616, "llama-2-13b": 13_015_864_320, "llama-2-70b": 68_976_648_192}


@pytest.mark.parametrize("name", sorted(LLAMA_2))
def test_shipped_llama_2_configs_have_the_published_parameter_count(name):
    cfg = backbones.make_config(backbones.get(name))
    with torch.device("meta"):
        model = backbones.family_for(cfg.model_type).build(cfg)
    assert sum(p.numel() for p in model.parameters()) == LLAMA_2[name]
    if name == "llama-2-70b":  # grouped-query attention: 8 key/value heads for 64 query heads
        assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 8)


def test_unknown_model_lists_known():
    with pytest.raises(UserError) as exc:
        backbones.get("gpt5")
    for name in ("bert-base", "opt-1.3b", "llama-2-7b", "gpt2-large", "bart-large", "roberta-large"):
        assert name in str(exc.value)


# ---- --pretrained PATH ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny OPT saved with save_pretrained: a local checkpoint folder, no hub involved."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("ckpt") / "tiny-opt"
    cfg = backbones.make_config(backbones.get("opt-125m"), tiny("opt")[1])
    torch.manual_seed(123)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    return path, model


def test_pretrained_loads_local_checkpoint_on_cpu(checkpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, model = checkpoint
    r = profile(None, "full", batch_size=2, seq_len=8, device="cpu", pretrained=str(path))
    assert r.model == path.name and r.provenance["pretrained"] == str(path)  # one naming rule (result.model_name)
    assert r.num_params == sum(p.numel() for p in model.parameters())  # the tied head counts once
    # the saved weights were used: same loss as the saved model on the same batch and seed
    fam = backbones.family_for("opt")
    batch = fam.make_batch(model.config, 2, 8, torch.Generator().manual_seed(0))
    model.train()
    torch.manual_seed(0)
    expected = float(model(**batch).loss)
    assert r.loss == pytest.approx(expected, rel=1e-5)
    # a random model gives another loss
    rand = profile("opt-125m", "full", batch_size=2, seq_len=8, device="cpu", overrides=tiny("opt")[1])
    assert rand.loss != pytest.approx(expected, rel=1e-3)
    assert rand.layer_bytes == r.layer_bytes


def test_pretrained_on_fake_matches_cpu(checkpoint):
    path, _ = checkpoint
    kw = dict(batch_size=2, seq_len=8, pretrained=str(path), dtype="bf16")
    assert (profile(None, "lora", device="fake", target="cpu", **kw).layer_bytes
            == profile(None, "lora", device="cpu", **kw).layer_bytes)


def test_pretrained_missing_folder(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        profile(None, "full", batch_size=1, seq_len=8, device="cpu", pretrained=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no config.json"):
        profile(None, "full", batch_size=1, seq_len=8, device="cpu", pretrained=str(tmp_path))
