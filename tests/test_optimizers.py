"""The optimizer table (membench.optimizers): every name, its help, how each target runs it, and what a GPU keeps in
host memory, all derived from the one table; profile_step's default is the table's."""

from __future__ import annotations

import pytest
import torch

from membench import optimizers
from membench.backends import TARGETS
from membench.errors import UserError
from membench.profilers.step import StepPlan, profile_step


def _one_step(name: str, target: str = "cpu"):
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = optimizers.factory(name, target)(params)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return params, opt


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(optimizers.OPTIMIZERS))
def test_every_name_runs_as_one_implementation_of_the_table_on_every_target(name, target):
    impl = optimizers.resolve(name, target)
    assert impl.name == optimizers.implementation(name, target) and not impl.runs_as
    _, opt = _one_step(name, target)
    import importlib

    assert type(opt) is getattr(importlib.import_module(impl.module), impl.torch_class)
    kwargs = {**impl.kwargs, **impl.target_kwargs.get(target, {})}
    assert all(opt.defaults[k] == v for k, v in kwargs.items()) and opt.defaults["lr"] == optimizers.LR


def test_adamw_is_what_pytorch_picks_on_each_target():
    assert optimizers.implementation("adamw", "cuda") == "adamw-foreach"
    assert optimizers.implementation("adamw", "cpu") == "adamw-forloop"
    assert optimizers.help_text() == ("adamw (as the target runs it), adamw-foreach, adamw-fused, adamw-forloop, sgd, "
                                      "sgd-momentum, adafactor, adamw-8bit, paged-adamw-8bit or paged-adamw")


@pytest.mark.parametrize(("name", "host"), [("adamw", 2), ("adamw-foreach", 2), ("adamw-forloop", 2),
                                            ("adamw-fused", 0), ("sgd", 0), ("sgd-momentum", 0),
                                            ("adafactor", 0), ("adamw-8bit", 0), ("paged-adamw-8bit", 0),
                                            ("paged-adamw", 0)])
def test_host_state_is_the_step_counters_unless_fused(name, host):
    params, opt = _one_step(name, "cuda" if name == "adamw" else "cpu")
    kept = optimizers.host_state(name, "cuda")(opt)
    assert len(kept) == host
    assert all(t is opt.state[p]["step"] for t, p in zip(kept, params, strict=False))


def test_a_new_row_is_checked_listed_and_built_without_another_edit(monkeypatch):
    row = optimizers.Optimizer("rmsprop", "RMSprop", torch_class="RMSprop", kwargs={"alpha": 0.9})
    monkeypatch.setitem(optimizers.OPTIMIZERS, row.name, row)
    assert optimizers.check("rmsprop") == "rmsprop"
    assert optimizers.help_text().endswith("paged-adamw or rmsprop")
    _, opt = _one_step("rmsprop")
    assert type(opt) is torch.optim.RMSprop and opt.defaults["alpha"] == 0.9
    assert len(optimizers.host_state("rmsprop", "cuda")(opt)) == 0


def test_unknown_names_list_the_table():
    with pytest.raises(UserError, match="unknown optimizer 'adam'; allowed: adamw, adamw-foreach, adamw-fused, "
                                        "adamw-forloop, sgd, sgd-momentum, adafactor, adamw-8bit, paged-adamw-8bit, "
                                        "paged-adamw$"):
        optimizers.check("adam")


def test_profile_step_defaults_to_the_tables_default(monkeypatch):
    """profile_step's optimizer, when the plan names none, is the table's default (no second definition)."""
    model = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    adamw = profile_step(model, (x,), StepPlan(track_live=False))
    assert adamw.optimizer_name == "AdamW" and adamw.optimizer_bytes == 2 * (8 * 4 + 4) * 4 + 2 * 4
    monkeypatch.setattr(optimizers, "DEFAULT", "sgd")
    sgd = profile_step(model, (x,), StepPlan(track_live=False))
    assert sgd.optimizer_name == "SGD" and sgd.optimizer_bytes == 0


# ---- each optimizer's state, in closed form, for bert-base full fine-tuning ---------------------------------------

def _bert_base(optimizer: str):
    from membench import profile

    return profile("bert-base", "full", batch_size=1, seq_len=8, device="fake", target="cpu", optimizer=optimizer)


@pytest.fixture(scope="module")
def bert_base_params():
    """(numel, shape) of every bert-base parameter that trains in full fine-tuning (built on meta: no memory)."""
    from membench.runner import build
    from membench.spec import RunSpec

    model = build(RunSpec(model="bert-base", device="fake", target="cpu"), inputs=False).model
    return [tuple(p.shape) for p in model.parameters() if p.requires_grad]


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.parametrize(("name", "state_bytes"), [
    ("adamw", lambda shapes: sum(2 * 4 * _numel(s) + 4 for s in shapes)),  # exp_avg, exp_avg_sq, a step counter
    ("sgd", lambda shapes: 0),
    ("sgd-momentum", lambda shapes: sum(4 * _numel(s) for s in shapes)),  # one momentum buffer
    # a matrix keeps its row and column second moments, a vector the whole; each an RMS scalar
    ("adafactor", lambda shapes: sum(4 * (s[0] + s[1] if len(s) == 2 else _numel(s)) + 4 for s in shapes)),
])
def test_state_bytes_of_bert_base_full_fine_tuning(bert_base_params, name, state_bytes):
    r = _bert_base(name)
    assert r.optimizer_bytes == state_bytes(bert_base_params)
    assert all(len(s) in (1, 2) for s in bert_base_params)  # the closed forms cover every shape it has


# ---- state bytes of bert-base full fine-tuning, as closed forms of its parameter shapes -------------------------


@pytest.fixture(scope="module")
def bert_base_shapes():
    from membench.runner import build
    from membench.spec import RunSpec

    built = build(RunSpec(model="bert-base", method="full", device="fake", target="cpu"), inputs=False)
    return [tuple(p.shape) for p in built.model.parameters() if p.requires_grad]


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _adamw(shapes):  # exp_avg + exp_avg_sq in fp32, and a 0-d fp32 step counter per parameter
    return sum(8 * _numel(s) + 4 for s in shapes)


def _adafactor(shapes):
    """HF Trainer's: no first moment; a row and a column of second moments per matrix, a full one per vector;
    and the weights' RMS, a 0-d fp32 tensor per parameter."""
    return sum((4 * (s[0] + s[1]) if len(s) == 2 else 4 * _numel(s)) + 4 for s in shapes)


def _adamw_8bit(shapes, block=256, small=4096):
    """bitsandbytes' layout: a tensor of >= 4096 values keeps both moments in uint8 with one fp32 absmax per
    256-value block; a smaller one keeps them in fp32; the two 256-entry fp32 maps (signed for the first
    moment, unsigned for the second) are shared by every tensor; the step count is a Python int."""
    total = 2 * 256 * 4
    for s in shapes:
        n = _numel(s)
        total += 2 * n + 2 * 4 * -(-n // block) if n >= small else 2 * 4 * n
    return total


CLOSED_FORMS = {"adamw": _adamw, "sgd": lambda s: 0, "sgd-momentum": lambda s: sum(4 * _numel(x) for x in s),
                "adafactor": _adafactor, "adamw-8bit": _adamw_8bit,
                "paged-adamw-8bit": _adamw_8bit, "paged-adamw": lambda s: sum(8 * _numel(x) for x in s)}


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_bert_base_state_bytes_are_the_closed_form(name, bert_base_shapes):
    from membench import profile

    target = "cuda" if name.startswith("paged") else "cpu"  # paging needs a CUDA target
    r = profile("bert-base", "full", batch_size=1, seq_len=8, device="fake", target=target, optimizer=name)
    assert r.optimizer_bytes == CLOSED_FORMS[name](bert_base_shapes)
    if name.startswith("paged"):  # the moments live in unified memory: in nvidia-smi, not in the allocator
        p = r.predicted_cuda
        moments = (2 if name.endswith("8bit") else 8) * sum(_numel(s) for s in bert_base_shapes if
                                                              not name.endswith("8bit") or _numel(s) >= 4096)
        small = 0 if not name.endswith("8bit") else 8 * sum(_numel(s) for s in bert_base_shapes if _numel(s) < 4096)
        assert p.paged_bytes == moments + small
        assert p.nvidia_smi_bytes == p.max_reserved_bytes + p.context_bytes + p.paged_bytes


def test_the_8bit_layout_is_bitsandbytes_own_on_real_tensors():
    """The closed form above, checked against the state bitsandbytes keeps on real CPU tensors."""
    shapes = [(64, 128), (100,), (4096,), (5000,)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = optimizers.factory("adamw-8bit", "cpu")(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for s in opt.state.values()
                for t in s.values() if isinstance(t, torch.Tensor)}
    assert sum(storages.values()) == _adamw_8bit(shapes)
    assert opt.state[params[0]]["state1"].dtype == torch.uint8 and opt.state[params[1]]["state1"].dtype == torch.float32


def test_paged_optimizers_need_a_cuda_target():
    from membench.spec import RunSpec

    with pytest.raises(UserError, match="pages its state in CUDA unified memory; the CPU target has none"):
        RunSpec(model="bert-base", optimizer="paged-adamw-8bit", device="fake", target="cpu").validate()
    RunSpec(model="bert-base", optimizer="paged-adamw-8bit", device="fake").validate()


@pytest.mark.parametrize("name", ["adamw-8bit", "adafactor", "sgd-momentum"])
def test_fake_equals_cpu_for_the_new_optimizers(name):
    from membench import profile
    from membench.backbones.tiny import FAMILY_MODELS, tiny_overrides

    runs = [profile(FAMILY_MODELS["opt"], "full", batch_size=2, seq_len=16, device=d, target="cpu" if d == "fake"
                    else None, overrides=tiny_overrides("opt", layers=2, hidden=128), optimizer=name)
            for d in ("fake", "cpu")]
    fields = ("optimizer_bytes", "estimated_peak_bytes", "peak_activation_bytes", "peak_by_phase")
    assert [getattr(runs[0], f) for f in fields] == [getattr(runs[1], f) for f in fields]
