"""Quantized bases (membench/quant): the options, the build as transformers + peft do it, the bytes in closed form,
fake == cpu, what a QLoRA layer saves, MEFT on a quantized base, and the refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("bitsandbytes")

from membench import results  # noqa: E402
from membench.backbones.tiny import tiny  # noqa: E402
from membench.errors import UserError  # noqa: E402
from membench.profilers.weights import weight_tensors  # noqa: E402
from membench.result import RunRecord  # noqa: E402
from membench.runner import build, profile  # noqa: E402
from membench.spec import RunSpec  # noqa: E402

QUANTS = {"nf4": {"quant": "nf4"}, "nf4+dq": {"quant": "nf4", "quant_double_quant": True},
          "fp4/b128": {"quant": "fp4", "quant_blocksize": 128}, "int8": {"quant": "int8"}}


def spec(family="llama", method="lora", quant="nf4+dq", layers=2, device="fake", target="cpu", **kw):
    name, ov = tiny(family)
    ov = dict(ov, num_hidden_layers=layers) if family != "bart" else ov
    q = dict(QUANTS[quant], kbit_ckpt=kw.pop("kbit_ckpt", False)) if quant else {}
    return RunSpec(model=name, overrides=ov, method=method, batch_size=2, seq_len=8, dtype=kw.pop("dtype", "bf16"),
                   device=device, target=target, **q, **kw)


def storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        seen[id(t.untyped_storage())] = t.untyped_storage().nbytes()
    return sum(seen.values())


# ---- parameter bytes in closed form ------------------------------------------------------------------------------


def linear_bytes(n: int, k: int, quant: str) -> int:
    """One converted nn.Linear [n, k] (no bias), as bitsandbytes stores it."""
    if quant == "int8":
        return n * k + 4 * n  # int8 weight + fp32 row scales (SCB)
    blocksize = {"fp4/b128": 128}.get(quant, 64)
    blocks = math.ceil(n * k / blocksize)
    packed = math.ceil(n * k / 2)  # two 4-bit codes per byte
    code = 16 * 2  # the 4-bit type's 16 values, in the weights' dtype (bf16 here), one per layer
    if quant == "nf4+dq":  # absmax as uint8, + offset (0-dim fp32) + nested absmax (fp32 per 256) + its 256 code
        return packed + code + blocks + 4 + 4 * math.ceil(blocks / 256) + 256 * 4
    return packed + code + 4 * blocks


@pytest.mark.parametrize("quant", list(QUANTS))
@pytest.mark.parametrize("family", ["llama", "opt"])
def test_layer_parameter_bytes_equal_closed_forms(family, quant):
    built = build(spec(family, quant=quant, device="cpu", target=None), inputs=False)
    layer = built.family.stacks(built.base)["layers"][0]
    cfg = built.config
    d = cfg.hidden_size
    if family == "llama":
        ffn, linears, other = cfg.intermediate_size, None, 2 * d  # two RMSNorm weights, fp32 after prepare
        linears = [(d, d)] * 4 + [(ffn, d), (ffn, d), (d, ffn)]
        biases = 0
    else:
        ffn = cfg.ffn_dim
        linears = [(d, d)] * 4 + [(ffn, d), (d, ffn)]
        other = 2 * 2 * d  # two LayerNorms (weight + bias)
        biases = 4 * d + ffn + d  # q, k, v, out_proj, fc1, fc2 biases: fp32 after prepare_model_for_kbit_training
    expected = sum(linear_bytes(n, k, quant) for n, k in linears) + 4 * (other + biases)
    adapters = [p for n, p in layer.named_parameters() if "lora_" in n]
    assert storage_bytes(weight_tensors(layer)) - storage_bytes(adapters) == expected


def test_run_parameter_bytes_count_the_quant_state():
    """The run's param_bytes are the model's parameters plus the scales its quantized weights hold."""
    r = profile(spec("llama", quant="nf4+dq"))
    built = build(spec("llama", quant="nf4+dq", device="cpu", target=None), inputs=False)
    assert r.param_bytes == storage_bytes(p for p in weight_tensors(built.model) if p not in set(built.model.buffers()))
    plain = storage_bytes(built.model.parameters())
    assert r.param_bytes > plain  # absmax, codes, offsets, nested state


# ---- the build ---------------------------------------------------------------------------------------------------


def test_the_head_stays_unquantized_and_the_rest_is_prepared_for_kbit_training():
    import bitsandbytes as bnb

    built = build(spec("llama", device="cpu", target=None), inputs=False)
    model = built.base
    kinds = {type(m) for m in model.model.layers.modules()}
    assert bnb.nn.Linear4bit in kinds and torch.nn.Linear not in {type(m) for m in model.model.layers[0].mlp.children()}
    assert type(model.lm_head) is torch.nn.Linear  # transformers' default skip: the output embedding
    # prepare_model_for_kbit_training: every non-4-bit fp16/bf16 parameter in fp32
    assert {p.dtype for n, p in model.named_parameters() if "lora" not in n and p.is_floating_point()} == {torch.float32}
    assert model.is_loaded_in_4bit


def _checkpointing(model) -> bool:  # (transformers 5.23 renamed it)
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    return getattr(model, name)


def test_peft_default_checkpointing_is_transformers_own():
    assert _checkpointing(build(spec("llama", kbit_ckpt=True, device="cpu", target=None), inputs=False).base)
    assert not _checkpointing(build(spec("llama", device="cpu", target=None), inputs=False).base)


# ---- fake == cpu, and what a QLoRA layer saves ------------------------------------------------------------------


def _figures(r):
    return (r.param_bytes, r.activation_bytes, r.recompute_bytes, r.peak_activation_bytes, r.optimizer_bytes,
            r.estimated_peak_bytes, [(x.name, x.activation_bytes, x.recompute_bytes) for x in r.layers])


@pytest.mark.parametrize("family,method,quant,ckpt", [
    ("llama", "lora", "nf4+dq", False), ("llama", "lora", "nf4+dq", True), ("opt", "lora", "nf4", False),
    ("opt", "ia3", "fp4/b128", False), ("llama", "houlsby", "int8", False), ("opt", "lora", "int8", True),
    ("bert", "lora", "nf4+dq", False), ("llama", "meft1", "nf4+dq", False), ("opt", "prefix", "nf4", False),
])
def test_fake_equals_cpu_to_the_byte(family, method, quant, ckpt):
    cpu = profile(spec(family, method, quant, device="cpu", target=None, kbit_ckpt=ckpt))
    fake = profile(spec(family, method, quant, device="fake", target="cpu", kbit_ckpt=ckpt))
    assert _figures(cpu) == _figures(fake)
    assert cpu.activation_bytes > 0


@pytest.mark.parametrize("quant", ["nf4+dq", "int8"])
@pytest.mark.parametrize("family", ["llama", "opt"])
def test_a_qlora_layer_saves_what_fp32_lora_saves(family, quant):
    """Hand count. prepare_model_for_kbit_training makes the embeddings fp32, so the residual stream is fp32;
    a 4-bit layer casts its input to the compute dtype, runs bitsandbytes' matmul (MatMul4Bit keeps only the
    packed weight, in ctx: no saved tensor) and casts the output back to fp32. So every saved tensor of a QLoRA
    layer is the one a 32-true LoRA layer saves (a frozen nn.Linear saves nothing either), module by module."""
    def per_module(r):
        return {m["name"]: m["activation_bytes"] for m in r.modules if m["activation_bytes"]}

    q = profile(spec(family, quant=quant, layers=1))
    fp32 = profile(spec(family, quant=None, layers=1, dtype="fp32"))
    assert per_module(q) == per_module(fp32)
    if family == "llama":  # and in closed form (b 2, s 8, d 32, ffn 64, r 8; fp32)
        b, s, d, ffn, r = 2, 8, 32, 64, 8
        mods = {k.split("layers.0.")[-1]: v for k, v in per_module(q).items() if "layers.0." in k}
        assert mods["self_attn.q_proj.lora_A.default"] == 4 * b * s * d  # the normed input (fp32, shared with v)
        assert "self_attn.v_proj.lora_A.default" not in mods
        assert mods["self_attn.q_proj.lora_B.default"] == mods["self_attn.v_proj.lora_B.default"] == 4 * b * s * r
        assert mods["post_attention_layernorm"] == 4 * b * s * d + 4 * b * s  # pow's input, rsqrt's output
        assert mods["mlp.act_fn"] == 4 * b * s * ffn  # SiLU's input (gate, back in fp32)
        assert mods["mlp"] == 2 * 4 * b * s * ffn  # act(gate) * up: both
        assert not any(k.endswith(("_proj", "_proj.base_layer")) for k in mods)  # the 4-bit layers: nothing


# ---- MEFT on a quantized base ------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", ["nf4", "int8"])
@pytest.mark.parametrize("variant", ["meft1", "meft3"])
def test_meft_recompute_is_exact_on_a_quantized_base(variant, quant):
    """The reversible backward recomputes the frozen layers with the same dequantized weights (bitsandbytes'
    dequantization is deterministic), so its gradients match plain autograd as closely as on an fp32 base."""
    from membench.verify import verify_numbers

    name, ov = tiny("llama")
    extra = {"quant_blocksize": 32} if quant == "nf4" else {}  # (hidden 32: the CPU eval path wants K >= block)
    quantized = verify_numbers(RunSpec(model=name, overrides=ov, method=variant, dtype="fp32", batch_size=2,
                                       seq_len=8, quant=quant, kbit_ckpt=False, **extra))
    plain = verify_numbers(RunSpec(model=name, overrides=ov, method=variant, dtype="fp32", batch_size=2, seq_len=8))
    assert quantized["max_grad_error"] < max(10 * plain["max_grad_error"], 1e-6)
    assert quantized["max_grad_error"] < 1e-4


def test_dequantization_is_deterministic():
    import bitsandbytes as bnb

    built = build(spec("llama", device="cpu", target=None), inputs=False)
    layer = next(m for m in built.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    a = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    b = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    assert torch.equal(a, b)


# ---- refusals ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,field", [
    ({"quant": "nf8"}, "quant"), ({"quant_blocksize": 64}, "quant_blocksize"),
    ({"quant": "int8", "quant_blocksize": 64}, "quant_blocksize"), ({"quant": "nf4", "quant_blocksize": 48}, "quant_blocksize"),
    ({"quant": "nf4", "quant_compute_dtype": "fp64"}, "quant_compute_dtype"), ({"kbit_ckpt": False}, "kbit_ckpt"),
])
def test_bad_quant_options_name_their_flag(kw, field):
    name, ov = tiny("llama")
    with pytest.raises(UserError) as err:
        RunSpec(model=name, overrides=ov, device="fake", **kw).validate()
    assert err.value.field[0] == field and "\n" not in str(err.value)


def test_int8_on_a_cuda_prediction_is_refused():
    with pytest.raises(UserError, match="outlier"):
        spec("llama", quant="int8", target="cuda").validate()


@pytest.mark.parametrize("method,kw,match", [
    ("full", {}, "quantized weight"), ("meft1", {"kbit_ckpt": True}, "no-kbit-ckpt"),
    ("lora+ckpt", {"kbit_ckpt": True}, "no-kbit-ckpt"),
])
def test_methods_that_cannot_run_on_a_quantized_base_refuse(method, kw, match):
    with pytest.raises(UserError, match=match):
        profile(spec("llama", method, **kw))


def test_bitfit_trains_the_unquantized_biases():
    """BitFit trains biases; a quantized layer keeps its bias unquantized, so it trains there (peft allows it)."""
    r = profile(spec("opt", "bitfit"))
    assert 0 < r.num_trainable_params < r.num_params


def test_without_quant_nothing_changes_in_the_run_key():
    name, ov = tiny("llama")
    plain = RunSpec(model=name, overrides=ov)
    assert "quant" not in json.dumps({k: v for k, v in plain.to_dict().items() if k in RunSpec._LATER
                                      and v != RunSpec._LATER[k]})
    assert plain.key() == RunSpec(model=name, overrides=ov, quant=None, kbit_ckpt=True).key()


# ---- results -----------------------------------------------------------------------------------------------------


def test_the_quant_label_is_in_the_result_the_database_and_the_tables(tmp_path):
    r = profile(spec("llama", quant="nf4+dq"))
    assert r.quant == "nf4+dq"
    db = tmp_path / "r.db"
    results.store_result(db, RunRecord(kind="memory", status="ok", result=r))
    df = results.load(db)
    assert list(df["quant"]) == ["nf4+dq"]
    assert profile(spec("llama", quant=None)).quant == ""


# ---- the command line ----------------------------------------------------------------------------------------------


def _tiny_args(family="llama"):
    name, ov = tiny(family)
    return ["--model", name, *[a for k, v in ov.items() for a in ("--override", f"{k}={v}")]]


def test_run_with_quant_writes_it_and_shows_it(cli, tmp_path, monkeypatch):
    from membench.cli import format as fmt

    monkeypatch.setattr(fmt.console, "width", 200)
    out, db = tmp_path / "r.json", tmp_path / "r.db"
    code, stdout, stderr = cli("run", *_tiny_args(), "--method", "lora", "-b", "2", "-s", "8", "--dtype", "bf16",
                               "--device", "fake", "--quant", "nf4", "--quant-double-quant", "--no-kbit-ckpt",
                               "--out", str(out), "--db", str(db))
    assert code == 0, stderr
    assert "nf4+dq base" in stdout
    data = json.loads(out.read_text())
    assert data["quant"] == "nf4+dq"
    code, stdout, _ = cli("results", "--db", str(db))
    assert code == 0 and "nf4+dq" in stdout


@pytest.mark.parametrize("args,flag", [(["--quant", "nf8"], "--quant"), (["--quant-blocksize", "64"], "--quant"),
                                       (["--quant", "int8"], "outlier"), (["--quant", "nf4", "--method", "full"],
                                                                           "quantized weight")])
def test_bad_quant_input_is_one_line_exit_2(cli, args, flag):
    base = [*_tiny_args(), "-b", "2", "-s", "8", "--device", "fake"]
    code, _, stderr = cli("run", *base, *args)
    assert code == 2 and flag in stderr and "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if line.strip()]) == 1


def test_the_report_tells_a_quantized_base_apart(tmp_path):
    """LoRA on a bf16 base and on an nf4 base are two lines of a figure, not one."""
    from membench.report.data import load_report_data

    db = tmp_path / "r.db"
    for quant in (None, "nf4"):
        results.store_result(db, RunRecord(kind="memory", status="ok", result=profile(spec("llama", quant=quant))))
    labels = sorted(load_report_data(db).runs["method_label"])
    assert labels == ["lora", "lora · nf4 base"]


# ---- bitsandbytes' fake kernels against its CPU kernels, op by op ------------------------------------------------


class BnbCalls:
    """Every bitsandbytes op a block runs on real CPU tensors: (op, args, kwargs, outputs)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        calls = self.calls = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if func.namespace == "bitsandbytes":
                    calls.append((func, args, kwargs or {}, out))
                return out

        self.mode = Mode()


def _meta(t):
    return (tuple(t.shape), t.dtype, tuple(t.stride()), t.untyped_storage().nbytes())


@pytest.mark.parametrize("quant", ["nf4+dq", "fp4/b128", "int8"])
def test_every_bitsandbytes_op_used_has_a_fake_kernel_equal_to_its_cpu_kernel(quant):
    """The fake run is exact only if each op's fake kernel returns what its CPU kernel returns: shapes, dtypes,
    strides and storage sizes, checked on every op a QLoRA build and step call (bitsandbytes registers them all;
    membench adds none)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    rec = BnbCalls()
    with rec.mode:
        built = build(spec("llama", quant=quant, device="cpu", target=None))
        built.model(**built.batch).loss.backward()
    names = {func.name() for func, *_ in rec.calls}
    assert names  # the step ran bitsandbytes' ops
    for func, args, kwargs, out in rec.calls:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            conv = lambda x: mode.from_tensor(x) if isinstance(x, torch.Tensor) else x  # noqa: E731
            fake = func(*[conv(a) for a in args], **{k: conv(v) for k, v in kwargs.items()})
        real = out if isinstance(out, tuple | list) else [out]
        fake = fake if isinstance(fake, tuple | list) else [fake]
        assert [_meta(t) for t in real if isinstance(t, torch.Tensor)] == \
            [_meta(t) for t in fake if isinstance(t, torch.Tensor)], func.name()


def test_peft_dispatches_its_bnb_layers_after_an_unquantized_run_in_the_same_process():
    """An unquantized LoRA run hides bitsandbytes from peft while it wraps the layers (import time); a quantized run
    after it in the same process still gets peft's bitsandbytes LoRA layers."""
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    build(spec("llama", quant=None, device="cpu", target=None), inputs=False)
    built = build(spec("llama", device="cpu", target=None), inputs=False)
    assert any(isinstance(m, LoraLinear4bit) for m in built.model.modules())


def test_an_unquantized_peft_run_does_not_import_bitsandbytes():
    """peft imports bitsandbytes wherever it is installed (about 2.5 s); membench spares runs without --quant."""
    import subprocess
    import sys

    code = ("import sys; from membench import profile; "
            "profile('opt-125m', 'lora', batch_size=1, seq_len=16, device='fake', tiny=True); "
            "print('bitsandbytes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
