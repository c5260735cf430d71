"""What trains: each method declares it, the builder sets it once (membench.methods.trainable).

- every family x method trains the same parameters (names and element count) and resolves to the same
  options (LoRA and IA3's targets among them) as before methods declared it: trainable_8e829eb.json,
  written at commit 8e829eb by trainable_record.py (rerun it there to see how it was made);
- what a method's `apply` leaves trainable does not count, only what it declares; a modifier's declaration
  adds to its method's; `membench train` turns a frozen classifier head on through the same function.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from membench import methods
from membench.backbones import FAMILIES
from membench.errors import UserError
from membench.methods import trainable
from membench.methods.base import Method

from . import baselines_util
from .baselines_util import build_cpu
from .trainable_record import cases, key, record

REFERENCE = json.loads((Path(__file__).parent / "trainable_8e829eb.json").read_text())
CASES = {key(*case): case for case in cases()}

_one_thread = pytest.fixture(autouse=True, scope="module")(baselines_util.one_thread)


def test_the_reference_covers_every_case_it_had():
    assert set(REFERENCE) <= set(CASES), sorted(set(REFERENCE) - set(CASES))


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_trains_and_resolves_as_at_8e829eb(case):
    now, then = record(*CASES[case]), REFERENCE[case]
    if "refused" in then:
        assert now == then
        return
    assert now.get("options") == then["options"], f"{case}: resolved options differ"
    assert now.get("trainable") == then["trainable"], (
        f"{case}: now trains {sorted(set(now.get('trainable', [])) ^ set(then['trainable']))[:6]} differently")
    assert now["numel"] == then["numel"]


@pytest.mark.parametrize(("family", "spec"), [("bert", "lora+ckpt"), ("opt", "houlsby+chunkloss"),
                                              ("bart", "prefix+ckpt+chunkloss"), ("llama", "meft3+ckpt"),
                                              ("gpt2", "full+ckpt")])
def test_modifiers_train_nothing_of_their_own(family, spec):
    with_modifiers, alone = record(family, spec), record(family, spec.split("+")[0])
    assert with_modifiers["trainable"] == alone["trainable"] and with_modifiers["numel"] == alone["numel"]


class _EverythingOnButNorms(Method):
    """A test method whose apply turns every parameter on, and which declares only the LayerNorm weights."""

    name = "test-norms"

    def apply(self, model, family, cfg):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def trainable(self, model, family, cfg):
        return _layer_norms(model)


class _PlusBiases(Method):
    """A test modifier that trains the bias terms on top of its method's parameters."""

    name = "test-biases"
    is_modifier = True

    def apply(self, model, family, cfg):
        return model

    def trainable(self, model, family, cfg):
        return lambda name, p: name.endswith(".bias")


def _layer_norms(model):
    return trainable.among(p for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters())


@pytest.fixture
def registered_test_methods(monkeypatch):
    methods.names()  # the registry loaded, then the two test methods added for this test only
    for cls in (_EverythingOnButNorms, _PlusBiases):
        monkeypatch.setitem(methods._REGISTRY, cls.name, cls())


def test_only_what_a_method_declares_trains(registered_test_methods):
    model, _, _ = build_cpu("bert", "test-norms")
    norms = _layer_norms(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if norms(n, p)] != []


def test_a_modifier_adds_what_it_declares(registered_test_methods):
    model, _, _ = build_cpu("bert", "test-norms+test-biases")
    norms = _layer_norms(model)
    for name, p in model.named_parameters():
        assert p.requires_grad == (norms(name, p) or name.endswith(".bias")), name


def test_a_method_that_declares_nothing_is_refused_by_name(monkeypatch):
    class Undeclared(Method):
        name = "test-undeclared"

        def apply(self, model, family, cfg):
            return model

    methods.names()
    monkeypatch.setitem(methods._REGISTRY, Undeclared.name, Undeclared())
    with pytest.raises(NotImplementedError, match="test-undeclared.*Method.trainable"):
        build_cpu("bert", "test-undeclared")


def test_training_turns_a_frozen_classifier_head_on():
    """`membench train` needs the new head to learn; houlsby with train_head=false froze it."""
    model, _, fam = build_cpu("bert", "houlsby", options={"train_head": False})
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("classifier.") for n in before)
    assert trainable.train_head_too(model, fam)
    after = {n for n, p in model.named_parameters() if p.requires_grad}
    assert after - before == {n for n, _ in model.named_parameters() if n.startswith("classifier.")} != set()
    assert before <= after and not trainable.train_head_too(model, fam)  # trains now: nothing more to do


def test_training_leaves_a_head_that_trains_alone():
    model, _, fam = build_cpu("bert", "lora")  # peft's modules_to_save trains it
    before = [p.requires_grad for p in model.parameters()]
    assert not trainable.train_head_too(model, fam)
    assert [p.requires_grad for p in model.parameters()] == before


@pytest.mark.parametrize("family", sorted(f for f, fam in FAMILIES.items() if fam.bias_switches))
def test_bitfit_names_the_switches_that_give_a_family_biases(family):
    switches = FAMILIES[family].bias_switches
    with pytest.raises(UserError, match="no bias terms") as refused:
        build_cpu(family, "bitfit", base_method="full")  # (the family's own config: no biases)
    assert all(f"--override {key}=true" in str(refused.value) for key in switches)
    model, _, _ = build_cpu(family, "bitfit")  # the helper sets the switches for bitfit
    assert any(p.requires_grad for n, p in model.named_parameters() if n.endswith(".bias"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_method_refuses_the_inputs_it_does_not_read(family):
    fam = FAMILIES[family]
    for name in methods.names():
        method = methods.get(name)
        if fam.modality in method.modalities:
            continue
        with pytest.raises(UserError, match=f"{family} models read {fam.modality}s"):
            build_cpu(family, name)
