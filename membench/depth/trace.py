"""A step's allocation trace (its time line) at any depth, from the traces of a few shallow copies of the model (no torch).

A transformer's layers are identical, so one more layer inserts the same blocks of events at the same places
(its forward, its backward, its entries in each optimizer op) and changes nothing else. Measured on llama
LoRA and OPT MEFT3 (the issue 22 note): +73 forward, +153 backward, +12/+4/+4 optimizer events per llama layer.

    T(a)      base
    T(a+1)    base + 1 copy of each block    insertions found by a diff (insertions only, else: not aligned); a
    T(a+2)    base + 2 copies                block two copies interleave is split into the parts they double
    T(a+3)    base + 3 copies                each free's allocation expressed as a rule, learned on a+1..a+3
    T(a+4)    base + 4 copies                the rules checked on a depth they did not see (else: not aligned)
    T(N)      base + (N - a) copies          synthesized

What a free releases matters to the allocator (which block goes back), so every free is tied to its
allocation by a rule, in coordinates: a position of the base, or (block, copy, offset). A free in copy c of
a block releases, in J copies: a fixed base position; or the allocation at (block', offset') of copy c + d
("rel"), or of copy J - 1 - c + d ("ref", the backward's reversed order of layers); a copy number outside
0..J-1 stands for a base position (the layer before the copies, or after them). A free of the base releases a
base position, or copy d ("first") or J - 1 - d ("last") of a block. The copy next to the base's end (c = J - 1)
may have a rule of its own ("split"). Of the rules that explain every observation in T(a+1)..T(a+3), the one with
the fewest copy numbers past the ends is taken, and it must rebuild T(a+4) exactly, or the traces do not align.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..gpu.predict import AllocationTrace

LEARN = 3  # the fewest copies the rules are learned from (depths a+1..a+3); one more depth checks them, unseen


class NotAligned(Exception):
    """The shallow traces do not extrapolate exactly (the reason is the message)."""


class Undetermined(NotAligned):
    """The structure aligns, but the depths given do not determine every free's rule: one more depth may (a free that
    reaches back further than the copies learned from)."""


# ---- tokens: a trace as one sequence (events and kernel allocations), frees linked to their allocations -----------


@dataclass(frozen=True)
class Tokens:
    kinds: list[tuple]  # ("A", size, phase, host, mark) | ("F", size, phase, host) | ("K", nbytes, kind, label, phase)
    link: dict[int, int]  # token index of a free -> token index of its allocation


def tokens(trace: AllocationTrace) -> Tokens:
    kernel_at: dict[int, list] = {}
    for ev in trace.kernel:
        kernel_at.setdefault(ev[0], []).append(ev)
    kinds: list[tuple] = []
    link: dict[int, int] = {}
    born: dict[int, int] = {}
    for i, (sign, rid, phase) in enumerate(trace.events):
        for _pos, nbytes, kind, label, ph in kernel_at.get(i, ()):
            kinds.append(("K", nbytes, kind, label, ph))
        host = rid in trace.host
        if sign > 0:
            born[rid] = len(kinds)
            kinds.append(("A", trace.sizes[rid], phase, host, trace.marks.get(rid, "")))
        else:
            if rid not in born:
                raise NotAligned(f"a free of record {rid} without its allocation in the trace")
            link[len(kinds)] = born[rid]
            kinds.append(("F", trace.sizes[rid], phase, host))
    for _pos, nbytes, kind, label, ph in kernel_at.get(len(trace.events), ()):
        kinds.append(("K", nbytes, kind, label, ph))
    return Tokens(kinds, link)


def to_trace(t: Tokens, prestep: list[int]) -> AllocationTrace:
    """The AllocationTrace of a token sequence (record ids in order of allocation)."""
    sizes: list[int] = []
    events: list[tuple[int, int, str]] = []
    host: set[int] = set()
    marks: dict[int, str] = {}
    kernel: list[tuple] = []
    rid_of: dict[int, int] = {}
    for i, tok in enumerate(t.kinds):
        if tok[0] == "K":
            kernel.append((len(events), tok[1], tok[2], tok[3], tok[4]))
            continue
        if tok[0] == "A":
            rid = rid_of[i] = len(sizes)
            sizes.append(tok[1])
            if tok[4]:
                marks[rid] = tok[4]
        else:
            rid = rid_of[t.link[i]]
        if tok[3]:
            host.add(rid)
        events.append((1 if tok[0] == "A" else -1, rid, tok[2]))
    return AllocationTrace(prestep=list(prestep), sizes=sizes, events=events, host=host, kernel=kernel, marks=marks)


# ---- structure: where one more layer inserts its blocks ------------------------------------------------------------


def insertions(a: list, b: list) -> list[tuple[int, list]]:
    """(position in a, inserted items) turning `a` into `b` by insertions only; NotAligned otherwise."""
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    out = []
    for op, i1, _i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            continue
        if op != "insert":
            raise NotAligned(f"one more layer {op}s events at {i1} (not only insertions)")
        out.append((i1, list(b[j1:j2])))
    return out


def expand(base: list, inserts: list[tuple[int, list]], copies: int) -> tuple[list, list[tuple]]:
    """`base` with `copies` copies of each insertion at its place: (items, their coordinates)."""
    items, coords = [], []
    by_pos: dict[int, list[int]] = {}
    for i, (pos, _block) in enumerate(inserts):
        by_pos.setdefault(pos, []).append(i)
    for p in range(len(base) + 1):
        for i in by_pos.get(p, ()):
            block = inserts[i][1]
            for c in range(copies):
                for o, item in enumerate(block):
                    items.append(item)
                    coords.append(("blk", i, c, o))
        if p < len(base):
            items.append(base[p])
            coords.append(("base", p))
    return items, coords


def periodic(base: list, deeper: list[list], what: str) -> list[tuple[int, list]]:
    """The insertions that turn `base` into each of `deeper` (1, 2, 3 more layers) as copies.

    A layer's part of a place can itself be several parts: in an optimizer op over all parameters, each layer
    adds its parameters' allocations, then (another op) their frees; with one more layer the diff sees one
    block [A.. F..], with two it sees [A.. A.. F.. F..]. So each place's block B1 (one more layer) is split into
    the parts s1 s2 .. sk whose doubles s1 s1 s2 s2 .. sk sk make B2 (two more layers); every copy count then
    emits each part's copies together. Three more layers must come out right too, or they are not aligned."""
    one, two = insertions(base, deeper[0]), insertions(base, deeper[1])
    if all(expand(base, one, J)[0] == deeper[J - 1] for J in range(2, len(deeper) + 1)):
        return one
    if [p for p, _ in one] != [p for p, _ in two] or any(len(b2) != 2 * len(b1) for (_, b1), (_, b2) in
                                                          zip(one, two, strict=True)):
        raise NotAligned(f"one and two more layers add {what} at different places")
    inserts = []
    for (pos, b1), (_, b2) in zip(one, two, strict=True):
        parts = _doubled(b1, b2)
        if parts is None:
            raise NotAligned(f"two more layers do not add twice one layer's {what} at {pos}")
        inserts += [(pos, part) for part in parts]
    if any(expand(base, inserts, J)[0] != deeper[J - 1] for J in range(3, len(deeper) + 1)):
        raise NotAligned(f"more layers are not copies of one layer's {what}")
    return inserts


def _one_block(base: list, deeper: list[list]) -> list[tuple[int, list]]:
    """The allocations before the step (parameters in order, then what they hold, buffers and inputs): one more
    layer inserts its parameters, usually as one contiguous block. Only sizes (nothing is freed), so any place that
    rebuilds every deeper list is right; the latest such place after the common prefix is taken, else several
    places as for the events."""
    grow = len(deeper[0]) - len(base)
    if grow < 0:
        raise NotAligned("one more layer has fewer parameters")
    prefix = next((i for i, (x, y) in enumerate(zip(base, deeper[0], strict=False)) if x != y), len(base))
    for at in range(prefix, -1, -1):
        block = deeper[0][at:at + grow]
        if all(base[:at] + block * J + base[at:] == deeper[J - 1] for J in range(1, len(deeper) + 1)):
            return [(at, block)]
    return periodic(base, deeper, "parameters")  # several places (a quantized weight's scales come after the
    # parameters; two stacks that grow together): as the events


def _doubled(b1: list, b2: list) -> list[list] | None:
    """Parts s1..sk of b1 with b2 == s1 s1 s2 s2 .. sk sk, the longest first part first (a layer's part of a
    run stays one part: splitting it further would give the same items but other copies' coordinates), or None."""
    if not b1:
        return [] if not b2 else None
    for n in range(len(b1), 0, -1):
        head = b1[:n]
        if b2[:n] == head and b2[n:2 * n] == head:
            rest = _doubled(b1[n:], b2[2 * n:])
            if rest is not None:
                return [head, *rest]
    return None


# ---- rules: which allocation a free releases ----------------------------------------------------------------------


def _site(coord) -> tuple:
    return ("base", coord[1]) if coord[0] == "base" else ("blk", coord[1], coord[3])


def _target(rule: tuple, c: int | None, J: int, boundary: dict, geometry=None) -> tuple:
    """The coordinate a rule names for a free in copy c (None: a base free) of J copies. A copy number past the ends
    is the base position the traces showed for it, else (`geometry`: each block's place and length, the base's
    length) the base position that many blocks before or after the block's place."""
    if rule[0] == "split":  # the copy next to the base's end (c = J - 1) has its own rule
        rule = rule[1] if c == J - 1 else rule[2]
    kind = rule[0]
    if kind == "base":
        return ("base", rule[1])
    _k, i2, o2, _d = rule
    copy = _copy_of(rule, c, J)
    if 0 <= copy < J:
        return ("blk", i2, copy, o2)
    key = _past(i2, o2, copy, J)
    if key in boundary:
        return ("base", boundary[key])
    if geometry is not None:
        places, base_len = geometry
        pos, n = places[i2]
        at = pos + copy * n + o2 if copy < 0 else pos + (copy - J) * n + o2
        if 0 <= at < base_len:
            return ("base", at)
    raise Undetermined(f"a free reaches past the copies ({key}) where no trace showed what it releases")


def _copy_of(rule: tuple, c: int | None, J: int) -> int:
    """The copy number a block rule names for a free in copy c (None: a base free) of J copies."""
    kind, _i2, _o2, d = rule
    return {"rel": (c or 0) + d, "ref": J - 1 - (c or 0) + d, "first": d, "last": J - 1 - d}[kind]


def _past(i2: int, o2: int, copy: int, J: int) -> tuple:
    """The key of a copy number outside 0..J-1 of (block i2, offset o2): which side, and how far past it (the
    base's layer before the copies plays copy -1, the one after them copy J)."""
    return (i2, o2, "lo", copy) if copy < 0 else (i2, o2, "hi", copy - J)


def _candidates(site: tuple, c: int | None, J: int, target: tuple, inserts: list) -> list[tuple]:
    """The rules that name `target` for this observation. A base position may stand for a copy past either end of a
    block (the diff may put a layer's insertion a layer later than the layer a free reaches back to): those rules
    are candidates too, with the copy number the position has counted in blocks from the insertion."""
    if target[0] == "base":
        out = [("base", target[1])]
        for i2, (pos, block) in enumerate(inserts):
            n = len(block)
            k = (pos - target[1] + n - 1) // n if target[1] < pos else -((target[1] - pos) // n) - 1
            o2 = target[1] - (pos - k * n) if k > 0 else (target[1] - pos) % n
            out += _block_rules(site, c, J, i2, o2, -k if k > 0 else J - 1 - k)
        return out
    _b, i2, c2, o2 = target
    return _block_rules(site, c, J, i2, o2, c2)


def _block_rules(site: tuple, c: int | None, J: int, i2: int, o2: int, c2: int) -> list[tuple]:
    """The rules that name copy c2 of (block i2, offset o2) for a free in copy c (None: a base free) of J."""
    if site[0] == "blk":
        return [("rel", i2, o2, c2 - c), ("ref", i2, o2, c2 - (J - 1 - c))]
    return [("first", i2, o2, c2), ("last", i2, o2, J - 1 - c2)]


@dataclass
class DepthModel:
    """A trace's structure across depths: the base (depth `depth`), the blocks one layer inserts, and the rule of
    every free. `trace(n)` synthesizes the trace of depth n."""

    depth: int
    base: Tokens
    inserts: list[tuple[int, list]]
    rules: dict[tuple, tuple]  # free site -> rule
    boundary: dict[tuple, int]  # _past(...) -> the base position a copy number past the ends stands for
    prestep_base: list[int]
    prestep_inserts: list[tuple[int, list]]

    def tokens(self, n: int) -> Tokens:
        return self.placed(n)[0]

    def placed(self, n: int) -> tuple[Tokens, list[tuple]]:
        """The tokens of depth n and each one's coordinate (("base", p) or ("blk", block, copy, offset))."""
        J = n - self.depth
        if J < 0:
            raise ValueError(f"depth {n} is below the model's {self.depth}")
        kinds, coords = expand(self.base.kinds, self.inserts, J)
        index = {coord: i for i, coord in enumerate(coords)}
        geometry = ([(pos, len(block)) for pos, block in self.inserts], len(self.base.kinds))
        link = {}
        for i, (tok, coord) in enumerate(zip(kinds, coords, strict=True)):
            if tok[0] != "F":
                continue
            site = _site(coord)
            rule = self.rules.get(site)
            if rule is None:
                raise NotAligned(f"no rule for the free at {site}")
            target = _target(rule, coord[2] if coord[0] == "blk" else None, J, self.boundary, geometry)
            if target not in index:
                raise NotAligned(f"the free at {coord} names {target}, which is not in the trace")
            link[i] = index[target]
        return Tokens(kinds, link), coords

    def trace(self, n: int) -> AllocationTrace:
        prestep, _ = expand(self.prestep_base, self.prestep_inserts, n - self.depth)
        return to_trace(self.tokens(n), prestep)


def fit_depth(traces: dict[int, AllocationTrace]) -> DepthModel:
    """The DepthModel of traces at consecutive depths a..a+L+1 (L >= LEARN: the rules learn from a+1..a+L, and the
    deepest checks them); NotAligned (with why) where they do not extrapolate exactly."""
    depths = sorted(traces)
    a = depths[0]
    learn = len(depths) - 2
    if learn < LEARN or depths != [a + j for j in range(learn + 2)]:
        raise NotAligned(f"traces at {LEARN + 2} or more consecutive depths are needed, got {depths}")
    toks = {d: tokens(traces[d]) for d in depths}
    inserts = periodic(toks[a].kinds, [toks[a + J].kinds for J in range(1, learn + 2)], "events")
    if not inserts:
        raise NotAligned("one more layer adds no event")
    pre_inserts = _one_block(traces[a].prestep, [traces[a + J].prestep for J in range(1, learn + 2)])
    seen: dict[tuple, list] = {}  # free site -> every (copy, copies, target) the learning depths show
    for J in range(1, learn + 1):
        _kinds, coords = expand(toks[a].kinds, inserts, J)
        for f, alloc in toks[a + J].link.items():
            c = coords[f][2] if coords[f][0] == "blk" else None
            seen.setdefault(_site(coords[f]), []).append((c, J, coords[alloc]))
    boundary: dict[tuple, int] = {}
    rules = {site: _pick(site, obs, boundary, inserts) for site, obs in seen.items()}
    model = DepthModel(a, toks[a], inserts, rules, boundary, traces[a].prestep, pre_inserts)
    for J in range(1, learn + 2):  # every trace rebuilt exactly; the deepest one was not used to learn the rules
        if model.tokens(a + J).link != toks[a + J].link:
            raise Undetermined(f"the rules do not rebuild the frees of depth {a + J}")
    return model


def _pick(site: tuple, observations: list, boundary: dict, inserts: list) -> tuple:
    """The rule that explains every observation (copy, copies, target) of the free at `site`, recording in
    `boundary` what a copy number past the ends stands for. Where no one rule does, the copy next to the base's end
    (c = J - 1: its neighbour is the base's layer, not a copy) may have its own: ("split", its rule, the others')."""
    rule = _one_rule(site, observations, boundary, inserts)
    if rule is not None:
        return rule
    if site[0] == "blk":
        last = [o for o in observations if o[0] == o[1] - 1]
        others = [o for o in observations if o[0] != o[1] - 1]
        rules = [_one_rule(site, part, boundary, inserts) for part in (last, others)]
        if others and None not in rules:
            return ("split", *rules)
    raise Undetermined(f"no rule explains the free at {site}")


def _one_rule(site: tuple, observations: list, boundary: dict, inserts: list) -> tuple | None:
    """The simplest rule that explains every observation: the fewest copy numbers past the ends (each stands for a
    base position, a fact the rule did not derive), then a copy before a fixed base position."""
    candidates = {rule for c, J, target in observations for rule in _candidates(site, c, J, target, inserts)}
    best = None
    for rule in sorted(candidates, key=lambda r: (r[0] == "base", str(r))):
        found: dict = {}
        if all(_explains(rule, c, J, target, boundary, found) for c, J, target in observations):
            past = 0 if rule[0] == "base" else sum(not 0 <= _copy_of(rule, c, J) < J for c, J, _t in observations)
            if best is None or past < best[0]:
                best = (past, rule, found)
    if best is None:
        return None
    boundary.update(best[2])
    return best[1]


def _explains(rule: tuple, c: int | None, J: int, target: tuple, boundary: dict, found: dict) -> bool:
    """Whether `rule` names `target` for a free in copy c of J copies; a copy number past the ends may stand for a
    base position, once and consistently (`found`)."""
    if rule[0] == "base" or 0 <= _copy_of(rule, c, J) < J:
        return _target(rule, c, J, boundary) == target
    key = _past(rule[1], rule[2], _copy_of(rule, c, J), J)
    known = found.get(key, boundary.get(key))
    if target[0] != "base" or known not in (None, target[1]):
        return False
    found[key] = target[1]
    return True
