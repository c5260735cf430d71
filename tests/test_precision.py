"""Training precisions (membench.precision): Lightning's names, what --dtype means beside them, the checks, and
mixed precision through the profiled step on every backend."""

from __future__ import annotations

import json
import re

import pytest
import torch

from membench import precision, profile
from membench.backbones import FAMILIES
from membench.backbones.tiny import FAMILY_MODELS, text_seq, tiny_overrides
from membench.errors import UserError
from membench.spec import RunSpec


@pytest.mark.parametrize(("given", "hint"), [
    ("bf16", "HF's bf16=True"), ("fp16", "HF's fp16=True"), ("16", "Lightning's 16 is 16-mixed"),
    ("32", "Lightning.s 32 is 32-true"), ("mixed", "bf16-mixed or 16-mixed"), ("amp", "bf16-mixed or 16-mixed"),
])
def test_other_tools_spellings_are_refused_with_what_they_mean_here(given, hint):
    with pytest.raises(UserError, match=f"ambiguous: .*{hint}") as err:
        precision.get(given)
    assert "allowed: 32-true, bf16-true, 16-true, 64-true, bf16-mixed, 16-mixed" in str(err.value)
    assert err.value.field == ("precision",)


def test_dtype_alone_keeps_its_meaning_and_precision_alone_picks_the_weights():
    assert precision.resolve(None, "bf16") == (precision.PRECISIONS["bf16-true"], "bf16")
    assert precision.resolve(None, None)[0].name == "32-true"
    assert precision.resolve("bf16-mixed", None) == (precision.PRECISIONS["bf16-mixed"], "fp32")
    assert precision.resolve("16-true", None)[1] == "fp16"
    assert precision.resolve("bf16-mixed", "bf16")[1] == "bf16"  # the PEFT recipe: a bf16 base, fp32 adapters


@pytest.mark.parametrize(("name", "dtype", "message"), [
    ("16-mixed", "bf16", "GradScaler is for fp16; a bf16-loaded model trains with bf16-mixed"),
    ("bf16-true", "fp32", "bf16-true trains bf16 weights; --dtype fp32 contradicts it"),
    ("bf16-mixed", "fp16", "trains fp32 master weights (or a frozen bf16 base)"),
])
def test_contradictions_are_one_line(name, dtype, message):
    with pytest.raises(UserError, match=re.escape(message)):
        RunSpec(model="bert-base", precision=name, dtype=dtype).validate()


def test_the_spec_follows_the_precision_and_old_keys_stay():
    assert RunSpec(model="opt-125m", precision="bf16-true").dtype == "bf16"
    assert RunSpec(model="opt-125m", precision="bf16-mixed").dtype == "fp32"
    plain = RunSpec(model="opt-125m", method="lora")
    assert plain.dtype == "fp32" and plain.training_precision.name == "32-true"
    assert plain.key() == RunSpec(model="opt-125m", method="lora", dtype="fp32").key()  # runs stored before
    assert plain.key() != RunSpec(model="opt-125m", method="lora", precision="bf16-mixed").key()


def test_bf16_autocast_on_a_gpu_before_sm80_is_refused():
    with pytest.raises(UserError, match="bf16-mixed computes in bf16: v100-32gb \\(sm70\\) cannot train in bf16"):
        RunSpec(model="bert-base", precision="bf16-mixed", device="fake", gpu="v100-32gb").validate()
    RunSpec(model="bert-base", precision="16-mixed", device="fake", gpu="v100-32gb").validate()


FIGURES = ("activation_bytes", "peak_activation_bytes", "estimated_peak_bytes", "weight_copy_bytes", "param_bytes",
           "grad_bytes", "optimizer_bytes", "layer_bytes", "peak_by_phase", "precision")


def _run(family, name, device, method="full", **kw):
    return profile(FAMILY_MODELS[family], method, batch_size=2, seq_len=text_seq(family, 16), device=device,
                   target="cpu" if device == "fake" else None, overrides=tiny_overrides(family, layers=2),
                   precision=name, **kw)


@pytest.mark.parametrize("name", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fake_equals_cpu_under_target_cpu(family, name):
    fake, cpu = _run(family, name, "fake"), _run(family, name, "cpu")
    assert [getattr(fake, f) for f in FIGURES] == [getattr(cpu, f) for f in FIGURES]


def test_mixed_keeps_fp32_master_weights_and_saves_low_precision_activations():
    full, mixed = _run("opt", None, "fake"), _run("opt", "bf16-mixed", "fake")
    assert mixed.param_bytes == full.param_bytes and mixed.optimizer_bytes == full.optimizer_bytes
    assert mixed.grad_bytes == full.grad_bytes  # fp32 gradients of fp32 weights
    assert mixed.activation_bytes < full.activation_bytes
    assert mixed.weight_copy_bytes > 0 and full.weight_copy_bytes == 0  # the weights' bf16 casts


def test_the_peft_recipe_trains_fp32_adapters_on_a_bf16_base():
    r = _run("llama", "bf16-mixed", "fake", method="lora", dtype="bf16")
    bf16 = _run("llama", None, "fake", method="lora", dtype="bf16")
    assert r.dtype == "bf16" and r.precision == "bf16-mixed" and bf16.precision == "bf16-true"
    assert r.param_bytes == bf16.param_bytes  # peft keeps the adapters in fp32 either way


def test_a_16_mixed_step_scales_the_loss_and_steps():
    """On real CPU tensors: the GradScaler's scale exists, and the optimizer stepped (weights moved)."""
    from membench.backends import choose
    from membench.profilers.step import profile_step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
    before = [p.detach().clone() for p in model.parameters()]
    plan = choose("cpu").plan("adamw", precision=precision.get("16-mixed"))
    scalers = []
    make = plan.scaler
    plan.scaler = lambda: scalers.append(make()) or scalers[-1]
    step = profile_step(model, (torch.randn(4, 8),), plan)
    # the scale was made, and updated after the step (halved where the fp16 gradients overflowed)
    assert step.loss is not None and scalers and scalers[0].get_scale() in (65536.0, 32768.0)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_16_mixed_prediction_for_a_gpu_scales_its_loss():
    """On a CUDA target the GradScaler's tensors (scale, growth tracker, found_inf, inverse scale) are allocated
    in the step: the optimizer phase allocates more than the same step in bf16-mixed, which has no scaler."""
    kw = dict(batch_size=2, seq_len=16, device="fake", overrides=tiny_overrides("bert", layers=2))
    fp16 = profile(FAMILY_MODELS["bert"], "full", precision="16-mixed", **kw)
    bf16 = profile(FAMILY_MODELS["bert"], "full", precision="bf16-mixed", **kw)
    assert fp16.precision == "16-mixed" and fp16.target == "cuda"
    assert fp16.peak_by_phase["optimizer"] > bf16.peak_by_phase["optimizer"]


def test_cli_records_the_precision(cli, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, err = cli("run", "-m", "opt-125m", "--method", "lora", "-b", "1", "-s", "32", "--precision",
                            "bf16-mixed", "--override", "num_hidden_layers=1", "--out", str(out))
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["precision"] == "bf16-mixed" and data["dtype"] == "fp32"
    assert "bf16-mixed" in stdout
    code, _, err = cli("run", "-m", "opt-125m", "--precision", "bf16")
    assert code == 2 and err.count("\n") == 1 and "bf16-mixed" in err


def test_a_sweep_grid_follows_the_precision_s_weights():
    from membench.sweep.spec import Grid

    grid = Grid(models=["opt-125m"], methods=["lora"], batch_sizes=[1], run=RunSpec(device="fake", precision="bf16-true"))
    assert {r.dtype for r in grid.expand()} == {"bf16"}
    grid = Grid(models=["opt-125m"], methods=["lora"], batch_sizes=[1],
                run=RunSpec(device="fake", precision="bf16-mixed"))
    assert {(r.dtype, r.precision) for r in grid.expand()} == {("fp32", "bf16-mixed")}


def test_verify_under_mixed_precision_reports_it_and_recommends_checkpoints(cli, tmp_path):
    out = tmp_path / "v.json"
    code, stdout, _ = cli("verify", "-m", "bert-base", "--method", "meft1", "--override", "num_hidden_layers=4",
                          "-b", "1", "-s", "16", "--precision", "bf16-mixed", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["precision"] == "bf16-mixed"
    if data["passed"]:  # within the threshold: nothing to recommend
        assert code == 0 and data["recommendation"] is None
    else:
        assert code == 1 and "checkpoint_every=" in data["recommendation"] and "recommendation:" in stdout


def test_recommend_counts_the_layers_that_pass_from_the_top():
    from membench.verify import recommend

    layers = [{"layer": i, "reversible": True, "grad_error": e} for i, e in enumerate([5e-2, 4e-3, 2e-4, 1e-5])]
    assert "checkpoint_every=2" in recommend(layers, {}, 1e-3)
    assert recommend([dict(r, grad_error=1e-6) for r in layers], {}, 1e-3) is None
    assert "use fp32" in recommend(layers, {"checkpoint_every": 1}, 1e-3)


def test_16_mixed_refuses_fp16_trainable_weights_as_the_grad_scaler_would():
    with pytest.raises(UserError, match="GradScaler cannot unscale fp16 gradients, and full trains fp16 weights"):
        _run("opt", "16-mixed", "fake", dtype="fp16")
    r = _run("opt", "16-mixed", "fake", method="lora", dtype="fp16")  # causal LM: only fp32 adapters train
    assert r.precision == "16-mixed" and r.dtype == "fp16"
