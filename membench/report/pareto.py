"""The Pareto frontier of (memory, accuracy): less memory and more accuracy are better. No torch, no pandas."""

from __future__ import annotations

import math
from collections.abc import Sequence


def _ok(v) -> bool:
    try:
        return v is not None and not math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def pareto_mask(cost: Sequence[float], value: Sequence[float]) -> list[bool]:
    """True for points no other point dominates.

    Point j dominates i when cost_j <= cost_i and value_j >= value_i, with at least one
    strict. Identical points do not dominate each other (both stay on the frontier);
    points with a missing (None/NaN) coordinate are never on it.
    """
    if len(cost) != len(value):
        raise ValueError(f"pareto_mask: {len(cost)} costs but {len(value)} values")
    pts = [(float(c), float(v)) if _ok(c) and _ok(v) else None for c, v in zip(cost, value, strict=True)]
    mask = []
    for i, p in enumerate(pts):
        if p is None:
            mask.append(False)
            continue
        ci, vi = p
        dominated = any(q is not None and j != i and q[0] <= ci and q[1] >= vi and (q[0] < ci or q[1] > vi)
                        for j, q in enumerate(pts))
        mask.append(not dominated)
    return mask


def frontier_path(cost: Sequence[float], value: Sequence[float]) -> list[tuple[float, float]]:
    """The frontier as a staircase to draw: points sorted by cost, with the corner steps between them."""
    mask = pareto_mask(cost, value)
    front = sorted({(float(c), float(v)) for c, v, m in zip(cost, value, mask, strict=True) if m})
    path: list[tuple[float, float]] = []
    for c, v in front:
        if path:
            path.append((c, path[-1][1]))  # horizontal to the next cost, then up
        path.append((c, v))
    return path
