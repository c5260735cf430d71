"""Facts that live on the Family: its tiny config, its head names, how `membench list` describes it."""

import pytest

from membench import backbones
from membench.backbones.tiny import FAMILY_MODELS, tiny_overrides


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
