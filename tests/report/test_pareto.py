"""Pareto frontier of (memory, accuracy) on hand-made points."""

from __future__ import annotations

import math
import random

import pytest

from membench.report.pareto import frontier_path, pareto_mask


def naive(points):
    """Reference: a point is on the frontier if no other point is at least as good on both and better on one."""
    out = []
    for i, (c, v) in enumerate(points):
        out.append(not any((c2 <= c and v2 >= v) and (c2, v2) != (c, v) for j, (c2, v2) in enumerate(points) if j != i))
    return out


def test_one_point_is_the_frontier():
    assert pareto_mask([10.0], [0.5]) == [True]
    assert frontier_path([10.0], [0.5]) == [(10.0, 0.5)]


def test_empty():
    assert pareto_mask([], []) == []


def test_all_dominated_by_one_point():
    # the first point uses the least memory and is the most accurate: it dominates every other one
    cost = [1.0, 2.0, 3.0, 1.5, 2.0]
    acc = [0.9, 0.8, 0.85, 0.9, 0.1]
    assert pareto_mask(cost, acc) == [True, False, False, False, False]


def test_trade_off_keeps_every_non_dominated_point():
    cost = [1.0, 2.0, 3.0, 2.5]
    acc = [0.6, 0.7, 0.8, 0.65]  # (2.5, 0.65) is beaten by (2.0, 0.7)
    assert pareto_mask(cost, acc) == [True, True, True, False]
    assert frontier_path(cost, acc) == [(1.0, 0.6), (2.0, 0.6), (2.0, 0.7), (3.0, 0.7), (3.0, 0.8)]


def test_ties():
    # identical points do not dominate each other: both stay
    assert pareto_mask([1.0, 1.0], [0.7, 0.7]) == [True, True]
    # same memory: the more accurate wins
    assert pareto_mask([1.0, 1.0], [0.7, 0.8]) == [False, True]
    # same accuracy: the cheaper wins
    assert pareto_mask([1.0, 2.0], [0.8, 0.8]) == [True, False]
    # a tie on the frontier next to a dominated point
    assert pareto_mask([1.0, 1.0, 2.0], [0.9, 0.9, 0.5]) == [True, True, False]


def test_missing_values_are_never_on_the_frontier_and_dominate_nothing():
    cost = [1.0, float("nan"), 3.0, None]
    acc = [0.5, 0.99, 0.9, 0.99]
    assert pareto_mask(cost, acc) == [True, False, True, False]


def test_lengths_must_match():
    with pytest.raises(ValueError):
        pareto_mask([1.0, 2.0], [0.5])


@pytest.mark.parametrize("seed", range(5))
def test_matches_a_naive_definition_on_random_points(seed):
    rng = random.Random(seed)
    # coarse grid so that ties on either axis are common
    pts = [(float(rng.randint(1, 6)), rng.randint(50, 56) / 100) for _ in range(25)]
    mask = pareto_mask([p[0] for p in pts], [p[1] for p in pts])
    assert mask == naive(pts)
    front = [p for p, m in zip(pts, mask, strict=True) if m]
    # along the frontier, more memory must buy strictly more accuracy
    uniq = sorted(set(front))
    assert all(b[0] > a[0] and b[1] > a[1] for a, b in zip(uniq, uniq[1:], strict=False))
    assert not any(math.isnan(c) for c, _ in front)
