"""Facts that live on the Family: its tiny config and model, its dropout keys, its head names, how `membench list`
describes it."""

import pytest
import torch

from membench import backbones
from membench.backbones.tiny import FAMILY_MODELS, tiny, tiny_overrides
from membench.runner import build
from membench.spec import RunSpec


@pytest.mark.parametrize("family", sorted(backbones.FAMILIES))
def test_every_family_has_a_tiny_config_that_builds_small(family):
    fam = backbones.FAMILIES[family]
    ov = fam.tiny(layers=1, hidden=16, heads=2)
    assert ov == tiny_overrides(family, layers=1, hidden=16, heads=2)  # the helper is only a lookup
    config = backbones.make_config(backbones.get(FAMILY_MODELS[family]), ov)
    assert fam.hidden_size(config) == 16
    assert all(getattr(config, k) == 1 for k in fam.num_layers_key(config))


def test_describe_reads_the_familys_own_accessors():
    rows = {n: backbones.get(n).family.describe(backbones.make_config(backbones.get(n)))
            for n in ("bart-base", "gpt2", "roberta-base", "vit-base")}
    assert rows["bart-base"]["layers"] == "6+6" and rows["gpt2"]["hidden"] == "768"
    assert rows["roberta-base"]["positions"] == "512"  # usable positions (514 minus the padding offset)
    assert rows["vit-base"]["positions"] == "197 (224px)"


@pytest.mark.parametrize("family", list(backbones.FAMILIES))
def test_every_familys_tiny_model_is_a_shipped_model_of_that_family(family):
    fam = backbones.FAMILIES[family]
    assert fam.tiny_model in backbones.names() and backbones.get(fam.tiny_model).family is fam
    assert FAMILY_MODELS[family] == fam.tiny_model == tiny(family)[0]


def _train_forward(family: str, overrides: dict, seed: int):
    fam = backbones.FAMILIES[family]
    ov = {**tiny_overrides(family, layers=1, hidden=16), **overrides}
    torch.manual_seed(0)
    built = build(RunSpec(model=fam.tiny_model, dtype="fp64", device="cpu", overrides=ov), inputs=False)
    built.model.train()
    data = fam.make_batch(built.config, 2, 8, torch.Generator().manual_seed(0))
    torch.manual_seed(seed)
    with torch.no_grad():
        out = built.model(**data)
    return out.logits


@pytest.mark.parametrize("family", list(backbones.FAMILIES))
def test_dropout_overrides_turn_every_dropout_of_the_model_off_and_on(family):
    """Off: two training-mode forwards with different seeds agree exactly; at p = 0.3 they differ."""
    fam = backbones.FAMILIES[family]
    assert fam.dropout_keys and fam.dropout_overrides(0.3) == dict.fromkeys(fam.dropout_keys, 0.3)
    off = fam.dropout_overrides()
    assert torch.equal(_train_forward(family, off, seed=1), _train_forward(family, off, seed=2))
    on = fam.dropout_overrides(0.3)
    assert not torch.allclose(_train_forward(family, on, seed=1), _train_forward(family, on, seed=2))



def _tiny_model(family: str, **extra):
    import torch

    torch.manual_seed(0)
    named = backbones.get(FAMILY_MODELS[family])
    return named.family.build(backbones.make_config(named, {**tiny_overrides(family), **extra}))


@pytest.mark.parametrize("family", sorted(backbones.FAMILIES))
def test_every_family_names_a_module_for_every_role(family):
    """Methods target roles (LoRA: query, value); the family's names for them are modules of its models
    (ViT lists its earlier transformers names too: at least one name per role matches)."""
    fam = backbones.FAMILIES[family]
    assert set(fam.roles) == set(backbones.base.ROLES)
    names = [n for n, _ in _tiny_model(family).named_modules()]
    for role, suffixes in fam.roles.items():
        assert any(n.endswith("." + s) for s in suffixes for n in names), f"{family}: no module plays {role}"


def test_a_role_named_two_ways_lists_every_roles_newer_name_first():
    vit = backbones.FAMILIES["vit"]
    assert vit.module_names(("query", "value")) == ["q_proj", "v_proj", "query", "value"]
    gpt2 = backbones.FAMILIES["gpt2"]  # one fused projection plays query, key and value: named once
    assert gpt2.module_names(("key", "value", "ffn_down")) == ["c_attn", "mlp.c_proj"]


@pytest.mark.parametrize("family", sorted(backbones.FAMILIES))
def test_causal_stacks_are_the_familys_to_say(family):
    fam = backbones.FAMILIES[family]
    causal = {stack: fam.causal(stack) for stack in fam.stacks(_tiny_model(family))}
    expected = {"encoder": False, "decoder": True} if family == "bart" else {"layers": fam.decoder}
    assert causal == expected


@pytest.mark.parametrize("family", sorted(f for f, fam in backbones.FAMILIES.items() if fam.bias_switches))
def test_bias_switches_give_a_family_bias_terms(family):
    switches = backbones.FAMILIES[family].bias_switches
    biases = lambda model: [n for n, _ in model.named_parameters() if n.endswith(".bias")]  # noqa: E731
    assert not biases(_tiny_model(family))
    assert biases(_tiny_model(family, **dict.fromkeys(switches, True)))
