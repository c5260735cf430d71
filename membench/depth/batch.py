"""A step's time line at any batch size and depth, from shallow time lines at three batch sizes (no torch).

At a fixed sequence length a tensor's size is affine in the batch size b (an activation b·s·d bytes, a weight's
b⁰); the events themselves (their order, which free releases which allocation) are the same:

    T(a+1, b1), T(a+1, b2)   the same events; each size s(b) = s(b1) + (b - b1)·q, q = (s(b2) - s(b1))/(b2 - b1)
                             a whole number of bytes per sample
    T(a+1, b3)               rebuilt exactly from those sizes, unseen
    T(N, b)                  the depth model's events at N layers (membench.depth.trace, learned at b1), each size
                             that of its place (a base position, or a block's offset) at b

Depth a+1 holds the base and one copy of every block, so it names every place's size. A caller checks a
prediction with a real profile where it matters (fit: at the answer and the next batch size).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..gpu.predict import AllocationTrace
from .trace import DepthModel, NotAligned, expand, to_trace, tokens

SIZED = {"A", "F", "K"}  # tokens whose second item is a size (bytes)


@dataclass
class BatchDepthModel:
    depth_model: DepthModel  # learned at batch size b1
    b1: int
    slopes: dict[tuple, int]  # a place of the events -> bytes per sample
    pre_slopes: dict[tuple, int]  # a place of the allocations before the step -> bytes per sample

    def trace(self, n: int, b: int) -> AllocationTrace:
        toks, coords = self.depth_model.placed(n)
        kinds = [_resized(tok, self.slopes[_place(c)], b - self.b1) for tok, c in zip(toks.kinds, coords,
                                                                                      strict=True)]
        dm = self.depth_model
        sizes, pcoords = expand(dm.prestep_base, dm.prestep_inserts, n - dm.depth)
        prestep = [s + (b - self.b1) * self.pre_slopes[_place(c)] for s, c in zip(sizes, pcoords, strict=True)]
        if min(prestep, default=0) < 0 or any(t[0] in SIZED and t[1] < 0 for t in kinds):
            raise NotAligned(f"batch size {b} gives a negative size (below the batch sizes learned from)")
        return to_trace(type(toks)(kinds, toks.link), prestep)


def fit_batch(depth_model: DepthModel, traces: dict[int, AllocationTrace]) -> BatchDepthModel:
    """`traces`: depth a+1's time line at three batch sizes {b1, b2, b3} (b1 the depth model's), in order;
    NotAligned where the events differ or a size is not affine in the batch size."""
    b1, b2, b3 = sorted(traces)
    dm = depth_model
    _toks, coords = dm.placed(dm.depth + 1)
    pre_sizes, pre_coords = expand(dm.prestep_base, dm.prestep_inserts, 1)
    at = {b: tokens(traces[b]) for b in (b1, b2, b3)}
    if any(at[b].link != at[b1].link or [_unsized(t) for t in at[b].kinds] != [_unsized(t) for t in at[b1].kinds]
           for b in (b2, b3)):
        raise NotAligned("the events differ between batch sizes")
    if pre_sizes != traces[b1].prestep or len({len(traces[b].prestep) for b in (b1, b2, b3)}) > 1:
        raise NotAligned("the allocations before the step differ from the depth model's")
    slopes = _slopes([t[1] if t[0] in SIZED else 0 for t in at[b1].kinds],
                     [t[1] if t[0] in SIZED else 0 for t in at[b2].kinds], coords, b2 - b1)
    pre_slopes = _slopes(traces[b1].prestep, traces[b2].prestep, pre_coords, b2 - b1)
    model = BatchDepthModel(dm, b1, slopes, pre_slopes)
    predicted, real = model.trace(dm.depth + 1, b3), traces[b3]
    if (predicted.sizes, predicted.prestep, predicted.kernel) != (real.sizes, real.prestep, real.kernel):
        raise NotAligned(f"sizes are not affine in the batch size (batch {b3} differs from the line through "
                         f"{b1} and {b2})")
    return model


def _slopes(s1: list[int], s2: list[int], coords: list[tuple], db: int) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for x, y, c in zip(s1, s2, coords, strict=True):
        q, r = divmod(y - x, db)
        if r:
            raise NotAligned("a size does not grow by whole bytes per sample")
        if out.setdefault(_place(c), q) != q:
            raise NotAligned("one place's sizes grow differently in two copies")
    return out


def _place(coord: tuple) -> tuple:
    return coord if coord[0] == "base" else ("blk", coord[1], coord[3])


def _unsized(tok: tuple) -> tuple:
    return tok[:1] + tok[2:] if tok[0] in SIZED else tok


def _resized(tok: tuple, slope: int, db: int) -> tuple:
    return (tok[0], tok[1] + slope * db, *tok[2:]) if slope and tok[0] in SIZED else tok
