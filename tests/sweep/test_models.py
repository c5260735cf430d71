"""membench.sweep.models restates a few facts of the families without torch (for `sweep --dry-run`): they must
agree with the families themselves, for every shipped model, its tiny version and what methods refuse."""

from __future__ import annotations

import pytest

from membench import backbones
from membench.backbones.tiny import tiny_overrides
from membench.errors import UserError
from membench.runner import build
from membench.spec import RunSpec
from membench.sweep import models


@pytest.mark.parametrize("name", backbones.names())
def test_the_facts_of_every_shipped_model_are_its_familys(name):
    spec = backbones.get(name)
    family = spec.family
    assert models.known() == backbones.names()
    assert models.reads_images(name) == (family.modality == "image")
    assert models.TASKS[models.family(name)] == family.task and models.family(name) == family.name
    for overrides in ({}, tiny_overrides(family.name), {"max_position_embeddings": 64, "n_positions": 64}):
        config = backbones.make_config(spec, {k: v for k, v in overrides.items() if k in config_keys(spec)})
        wanted = None if family.modality == "image" else family.max_positions(config)
        assert models.max_positions(name, {k: v for k, v in overrides.items() if k in config_keys(spec)}) == wanted
    if family.modality == "image":
        assert models.patch_size(name) == backbones.make_config(spec).patch_size


def test_every_family_is_restated_and_nothing_else():
    """A new family (or model type) fails here until sweep/models.py restates its task and modality."""
    from membench.backbones.base import LM_TASKS

    types = {t: fam for fam in backbones.FAMILIES.values() for t in fam.model_types}
    assert {t: fam.task for t, fam in types.items()} == models.TASKS
    assert {t for t, fam in types.items() if fam.modality == "image"} == models.IMAGE_TYPES
    assert models.LM_TASKS == LM_TASKS


def config_keys(spec) -> set[str]:
    return set(backbones.make_config(spec).to_dict())


@pytest.mark.parametrize("family", sorted(backbones.FAMILIES))
@pytest.mark.parametrize("method", ["full+chunkloss", "lora+chunkloss", "prefix"])
def test_what_the_methods_refuse_of_a_family_is_known_without_building(family, method):
    name = backbones.FAMILIES[family].tiny_model
    refusal = models.method_refusal(method, name)
    try:
        build(RunSpec(model=name, method=method, device="fake", target="cpu", overrides=tiny_overrides(family)),
              inputs=False)
        refused = None
    except UserError as exc:
        refused = str(exc)
    assert refusal == refused
