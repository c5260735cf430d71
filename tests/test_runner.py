"""The Python API: profile() on registered backbones, profile_module() on any nn.Module, RunResult JSON."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from membench import LayerRow, RunResult, UserError, profile, profile_module
from membench.backbones.tiny import tiny

REQUIRED_KEYS = {"model", "method", "batch_size", "seq_len", "dtype", "device", "activation_bytes",
                 "peak_activation_bytes", "param_bytes", "trainable_param_bytes", "grad_bytes",
                 "optimizer_bytes", "layers", "provenance"}


class UserNet(nn.Module):
    """What a user might build: an embedding, a stack of blocks, a head, a loss inside."""

    def __init__(self, vocab=50, d=16, n=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.Tanh()) for _ in range(n))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids, labels):
        h = self.emb(ids)
        for b in self.blocks:
            h = h + b(h)
        return nn.functional.cross_entropy(self.head(h).flatten(0, 1), labels.flatten())


def test_profile_module_on_a_user_model():
    torch.manual_seed(0)
    net = UserNet()
    ids = torch.randint(0, 50, (4, 6))
    r = profile_module(net, {"ids": ids, "labels": ids})
    assert isinstance(r, RunResult)
    assert r.model == "UserNet" and r.method == "custom" and r.batch_size == 4 and r.seq_len == 6
    assert r.dtype == "fp32" and r.device == "cpu"
    # one row per block, then the rest grouped by top-level name; the ModuleList itself is no row
    names = [row.name for row in r.layers]
    assert names[:4] == ["emb", "blocks.0", "blocks.1", "blocks.2"]
    assert "blocks" not in names
    # each block: Linear saves h (4*6*16*4 = 1536 B, first save of that storage) and Tanh saves its
    # output (1536 B); block 0's input h is the embedding output (new storage) -> 3072 B each
    assert [r.layer_bytes[f"blocks.{i}"] for i in range(3)] == [3072, 3072, 3072]
    assert r.layer_bytes["emb"] == 0  # the embedding saves the ids: a model input
    assert r.input_bytes == 4 * 6 * 8  # ids and labels are one tensor here: counted once
    assert r.activation_bytes == sum(r.layer_bytes.values())
    assert r.param_bytes == 4 * sum(p.numel() for p in net.parameters())
    assert r.trainable_param_bytes == r.grad_bytes == r.param_bytes
    assert r.loss == pytest.approx(float(r.loss)) and r.loss > 0


def test_profile_module_custom_layers_and_loss():
    net = UserNet(n=2)
    ids = torch.randint(0, 50, (2, 5))
    rows = {m: "everything" for m in net.modules()}
    r = profile_module(net, (ids, ids), layers=rows, loss_fn=lambda loss: loss * 2, name="mine")
    assert r.model == "mine"
    assert [row.name for row in r.layers] == ["everything"]
    assert r.layers[0].activation_bytes == r.activation_bytes > 0


def test_json_has_the_issue_keys_and_round_trips(tmp_path):
    model, ov = tiny("bert")
    r = profile(model, "lora", batch_size=2, seq_len=8, dtype="bf16", device="fake", overrides=ov)
    d = json.loads(r.to_json())
    assert set(d) >= REQUIRED_KEYS
    assert all(set(row) >= {"name", "activation_bytes"} for row in d["layers"])
    assert d["dtype"] == "bf16" and d["device"] == "fake" and d["method"] == "lora"
    prov = d["provenance"]
    for key in ("membench", "torch", "transformers", "peft", "cuda", "device_name", "git_revision", "config"):
        assert key in prov
    assert prov["config"]["hidden_size"] == ov["hidden_size"]
    assert d["method_options"]["r"] == 8
    path = tmp_path / "r.json"
    r.save(str(path))
    back = RunResult.load(str(path))
    assert back == r
    assert isinstance(back.layers[0], LayerRow)
    assert back.to_dict() == r.to_dict()
    # unknown keys from a newer writer are ignored, not fatal
    assert RunResult.from_dict({**d, "from_the_future": 1}) == r


@pytest.mark.parametrize(("kw", "match"), [
    ({"batch_size": 0}, "batch size must be a positive integer"),
    ({"batch_size": -2}, "batch size must be a positive integer"),
    ({"batch_size": 1.5}, "batch size must be a positive integer"),
    ({"batch_size": "8"}, "batch size must be a positive integer"),
    ({"batch_size": True}, "batch size must be a positive integer"),
    ({"seq_len": 0}, "sequence length must be a positive integer"),
    ({"seq_len": 2.0}, "sequence length must be a positive integer"),
    ({"seq_len": 600}, "longer than the model's 512 positions"),
    ({"dtype": "int4"}, "unknown dtype"),
    ({"device": "tpu"}, "unknown device"),
    ({"attn": "flash"}, "unknown attention"),
    ({"overrides": ["num_hidden_layers"]}, "expected KEY=VALUE"),
    ({"overrides": {"nope": 1}}, "unknown config key"),
    ({"method_options": {"rank": 4}}, "has no option 'rank'"),
    ({"snapshot": "x.pickle", "device": "cpu"}, "--snapshot needs --device cuda"),
])
def test_bad_input_is_a_user_error(kw, match):
    model, ov = tiny("bert")
    args = dict(batch_size=1, seq_len=8, device="fake", overrides=ov)
    args.update(kw)
    with pytest.raises(UserError, match=match):
        profile(model, "lora", **args)


@pytest.mark.parametrize(("family", "limit"), [("opt", 2048), ("gpt2", 1024), ("roberta", 512), ("bert", 512)])
def test_sequence_longer_than_positions(family, limit):
    model, ov = tiny(family, layers=1)
    with pytest.raises(UserError, match=f"longer than the model's {limit} positions"):
        profile(model, "full", batch_size=1, seq_len=limit + 1, device="fake", overrides=ov)


def test_cuda_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        profile("opt-125m", "full", device="cuda")


def test_default_device_without_gpu_is_fake(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, ov = tiny("opt", layers=1)
    assert profile(model, "full", batch_size=1, seq_len=4, overrides=ov).device == "fake"


def test_unknown_model_and_method_list_the_known_ones():
    with pytest.raises(UserError, match="known models: .*opt-1.3b"):
        profile("opt-13b", "full")
    with pytest.raises(UserError, match="known methods: .*full.*lora|known methods: .*lora.*full"):
        profile("opt-125m", "qlora")


def test_track_live_false_gives_the_same_ledger():
    model, ov = tiny("opt", layers=1)
    kw = dict(batch_size=2, seq_len=8, device="cpu", overrides=ov)
    live = profile(model, "full", **kw)
    bare = profile(model, "full", track_live=False, **kw)
    assert bare.layer_bytes == live.layer_bytes
    assert bare.peak_activation_bytes == bare.activation_bytes <= live.peak_activation_bytes
    assert bare.peak_by_phase == {}


def test_too_long_sequence_is_refused_before_the_model_is_built(monkeypatch):
    import pytest

    from membench import runner
    from membench.errors import UserError
    from membench.runner import building

    def no_build(*a, **k):
        raise AssertionError("the model was built before the sequence length was checked")

    monkeypatch.setattr(building, "_model", no_build)
    with pytest.raises(UserError, match="longer than the model's 1024 positions"):
        runner.profile("gpt2", "full", batch_size=1, seq_len=1025, device="fake")


def test_the_api_requires_a_model_as_run_does():
    """Issue 18 section 5: `membench run` requires -m; profile() has no default model either."""
    import inspect

    assert inspect.signature(profile).parameters["model"].default is None
    with pytest.raises(UserError, match="give a model name"):
        profile(method="full", batch_size=1, seq_len=8, device="fake")


def test_a_named_model_and_a_checkpoint_are_refused_together(tmp_path):
    """The checkpoint would be profiled under the named model's label: the rule `membench train` applies."""
    from transformers import AutoModelForSequenceClassification

    from membench import backbones

    model, ov = tiny("bert", layers=1)
    AutoModelForSequenceClassification.from_config(backbones.make_config(backbones.get(model), ov)).save_pretrained(
        tmp_path / "bert-ckpt")
    with pytest.raises(UserError, match="not both"):
        profile("opt-125m", "full", batch_size=1, seq_len=8, device="fake", pretrained=str(tmp_path / "bert-ckpt"))


def test_fake_inputs_are_made_as_fake_tensors(monkeypatch):
    """On fake the batch never exists as real CPU tensors (a huge batch is only its shapes)."""
    from torch._subclasses.fake_tensor import FakeTensor

    from membench.backbones.base import Family

    made = []
    real_make = Family.make_batch

    def recording(self, *args, **kwargs):
        batch = real_make(self, *args, **kwargs)
        made.append(all(isinstance(t, FakeTensor) for t in batch.values() if isinstance(t, torch.Tensor)))
        return batch

    monkeypatch.setattr(Family, "make_batch", recording)
    model, ov = tiny("opt", layers=1)
    profile(model, "full", batch_size=2, seq_len=8, device="fake", overrides=ov)
    assert made and all(made)


@pytest.mark.parametrize(("model", "kw", "message"), [
    ("opt-125m", {"batch_size": 10**8}, "the inputs alone (batch size 100000000 x 512 tokens: 762.94 GiB) exceed "
                                        "the a100-80gb's memory (80.00 GiB)"),
    ("vit-base", {"batch_size": 1, "image_size": 160000}, "160000x160000-pixel images: 286.10 GiB) exceed the "
                                                          "a100-80gb's memory"),
    ("opt-125m", {"batch_size": 10**20}, "cannot even be described as tensors"),
])
def test_absurd_inputs_are_refused_before_the_model_is_built(monkeypatch, model, kw, message):
    from membench.runner import building

    def no_build(*a, **k):
        raise AssertionError("the model was built before the inputs were checked")

    monkeypatch.setattr(building, "_model", no_build)
    with pytest.raises(UserError) as err:
        profile(model, "full", device="fake", **kw)
    assert message in str(err.value) and "lower --batch-size" in str(err.value)


def test_a_cpu_step_s_inputs_must_fit_in_this_machine_s_ram(monkeypatch):
    from membench import backends

    monkeypatch.setattr(backends, "_physical_ram", lambda: 2**20)
    model, ov = tiny("opt", layers=1)
    for kw in ({"device": "cpu"}, {"device": "fake", "target": "cpu"}):  # 64 x 2048 tokens, ids + labels: 2 MiB
        with pytest.raises(UserError, match=r"exceed this machine's RAM \(1.00 MiB\)"):
            profile(model, "full", batch_size=64, seq_len=2048, overrides=ov, **kw)
    assert profile(model, "full", batch_size=1, seq_len=8, device="cpu", overrides=ov).batch_size == 1


@pytest.mark.parametrize("device", ["fake", "cpu"])
def test_progress_tells_each_phase_and_layer_and_changes_no_figure(device):
    model, ov = tiny("opt", layers=3)
    kw = dict(batch_size=2, seq_len=8, device=device, overrides=ov)
    said: list[str] = []
    told = profile(model, "lora+ckpt", progress=said.append, **kw)
    quiet = profile(model, "lora+ckpt", **kw)
    assert said[0] == f"building {model} (3 layers)"
    step = "step 1/2 " if device == "fake" else ""  # a CUDA target runs a second (steady-state) step
    for line in ("forward", "forward: layer 3/3", "backward", "backward: layer 3/3", "optimizer step"):
        assert step + line in said, (line, said)
    assert ("step 2/2 backward: layer 3/3" in said) == (device == "fake")
    differ = ("wall_s", "provenance", "loss")  # (the loss: random weights, not seeded)
    assert {k: v for k, v in told.to_dict().items() if k not in differ} == \
        {k: v for k, v in quiet.to_dict().items() if k not in differ}


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 4)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize(("module", "batch", "kw", "message"), [
    ("bert-base", torch.randn(2, 64), {}, "profile_module takes an nn.Module you built, not a name ('bert-base'); "
                                          "for a registered model use membench.profile('bert-base', method, ...)"),
    ("bert", torch.randn(2, 64), {}, "with a NAME from `membench list`"),
    (_MLP(), None, {}, "batch: got NoneType; give the module's inputs as a dict"),
    (_MLP(), {}, {}, "with at least one tensor in it"),
    (_MLP(), torch.randn(2, 64), {"device": "tpu"}, "unknown device 'tpu'"),
    (_MLP(), torch.randn(2, 64), {"device": "fake"}, "device='fake' runs fake tensors, but the module's parameters"),
    (_MLP(), torch.randn(2, 64).to("meta"), {}, "tensors of the module or the batch are on meta"),
])
def test_profile_module_says_what_to_pass(module, batch, kw, message):
    with pytest.raises(UserError) as err:
        profile_module(module, batch, **kw)
    assert message in str(err.value)


def test_profile_module_cuda_without_a_gpu_and_fake_inputs_on_a_real_module(monkeypatch):
    from membench import runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        profile_module(_MLP(), torch.randn(2, 64), device="cuda")
    with runner.fake_mode():
        fake = torch.randn(2, 64)
    with pytest.raises(UserError, match="the batch's tensors are fake tensors: pass device='fake'"):
        profile_module(_MLP(), fake)
    with torch.device("meta"):
        net = _MLP()
    mode = runner.fake_mode()
    runner.fakeify(net, mode)
    with mode:
        batch = torch.randn(2, 64)
    frozen = nn.Linear(4, 4).requires_grad_(False)
    with pytest.raises(UserError, match="no trainable parameter"):
        profile_module(frozen, torch.randn(2, 4))
    r = profile_module(net, batch, device="fake", target="cpu")  # the right way: both fake
    assert r.device == "fake" and r.activation_bytes == profile_module(_MLP(), torch.randn(2, 64)).activation_bytes


@pytest.mark.parametrize(("batch", "seq_len", "shape"), [
    (torch.randn(32, 64), None, [32, 64]),  # features: no sequence axis
    (torch.randn(4, 6, 64), 6, [4, 6, 64]),  # hidden states [b, s, d]
    ({"ids": torch.randint(0, 50, (4, 6))}, 6, [4, 6]),  # token ids [b, s]
])
def test_seq_len_only_where_the_input_has_a_sequence(batch, seq_len, shape, tmp_path):
    if isinstance(batch, dict):
        net, batch = UserNet(), {"ids": batch["ids"], "labels": batch["ids"]}
    else:
        net = _MLP()
    r = profile_module(net, batch)
    assert (r.batch_size, r.seq_len, r.input_shape) == (shape[0], seq_len, shape)
    assert r.shape_label == (f"b{shape[0]} s{seq_len}" if seq_len else "input " + "x".join(map(str, shape)))
    r.save(str(tmp_path / "r.json"))
    back = json.loads((tmp_path / "r.json").read_text())
    assert (back["seq_len"], back["input_shape"]) == (seq_len, shape) and RunResult.from_dict(back) == r
