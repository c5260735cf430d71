"""What the report's figures mean: bars that add up, one reference line per test set, no frontier across
data sizes, small slices visible, axes from zero."""

from __future__ import annotations

from collections import defaultdict

import pytest

from .fixture_db import build_fixture_db


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from membench.report.data import load_report_data
    from membench.result import RunRecord
    from membench.results import config_of, load, load_result, store_result

    db = build_fixture_db(tmp_path_factory.mktemp("semantics") / "f.db")
    # the same method trained on a smaller set: its own test set (another majority) and its own frontier
    row = load(db, kind="train").iloc[0]
    r = load_result(db, int(row["run_id"]))
    cfg = config_of(r) | {"task": "rotten_tomatoes", "kind": "train", "limit": 200}
    store_result(db, RunRecord(result=r, kind="train", config=cfg,
                               metrics={"accuracy": 0.66, "majority_accuracy": 0.605, "n_train": 160, "n_test": 20}))
    return load_report_data(db)


def test_breakdown_bars_add_up_to_the_estimated_peak(data):
    from membench.report import figures as F

    figs = F.breakdown(data)
    assert figs
    for fig in figs:
        ax = fig.fig.axes[0]
        widths = defaultdict(float)
        for patch in ax.patches:
            widths[round(patch.get_y() + patch.get_height() / 2, 3)] += patch.get_width()
        labels = [t.get_text() for t in ax.texts]
        assert all(text.endswith("estimated peak") for text in labels)
        for text, total in zip(labels, [widths[k] for k in sorted(widths)], strict=True):
            assert float(text.split()[0].replace(",", "")) == pytest.approx(total, abs=0.06)


def test_breakdown_parts_are_the_estimate(data):
    from membench.report.figures import breakdown_parts

    mem = data.runs[data.runs["kind"] == "memory"].dropna(subset=["estimated_peak_bytes"])
    parts = breakdown_parts(mem)
    assert (parts.sum(axis=1) - mem["estimated_peak_bytes"].astype(float)).abs().max() < 1


def test_runs_on_other_data_get_their_own_frontier_and_reference(data):
    from membench.report import figures as F

    figs = F.pareto(data)
    titles = [f.title for f in figs]
    assert len(figs) == 2 and any("64 train examples" in t for t in titles) \
        and any("160 train / 20 test examples" in t for t in titles)
    for fig in figs:
        ax = fig.fig.axes[0]
        refs = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(refs) == 1  # the majority class of this figure's test set only
    small = next(f for f in figs if "160 train" in f.title)
    assert small.fig.axes[0].get_lines()[-1].get_ydata()[0] == pytest.approx(0.605)


def test_layer_bars_start_at_zero_and_keep_small_slices_visible(data):
    from membench.report import figures as F

    for fig in F.layer_bars(data):
        ax = fig.fig.axes[0]
        low, high = ax.get_ylim()
        assert low == 0
        heights = [p.get_height() for p in ax.patches]
        assert min(heights) >= F.MIN_SLICE * high / 1.1  # none is a sliver (axis top has ~10% margin)
