"""A step's saved-tensor charges at any depth, from the charges of shallow copies of the model (no torch).

Each charge (membench.profilers.ledger: module, row, phase, bytes) names a layer when its module is inside one:

    ('model.layers.3.mlp.fc1', 'layers.3', 'forward', 4096)  ->  token ('L', 'layers', '.mlp.fc1', 'forward', 4096),
                                                                 layer 3
Consecutive tokens of one layer are one item (a layer's saves, recomputed in backward, come together: the diff then
sees whole layers, not a layer's first half matched against its neighbour's). The items (their layer numbers left
out) extrapolate as a trace's events do (membench.depth.trace: one more layer inserts the same blocks). Each item's
layer number is a rule, learned per site on depths a+1..a+3 and checked on a+4 with everything else:

    a token of the base, layer l:        l          or  l + J                (before or after the inserted layers)
    copy c (of J) of a block:            k + c      or  k + (J - 1 - c)      (forward's order, or backward's)
"""

from __future__ import annotations

from dataclasses import dataclass

from .trace import LEARN, NotAligned, Undetermined, expand, periodic

Charge = tuple[str, str, str, int]  # (module, group, phase, bytes)


@dataclass(frozen=True)
class Layers:
    """Where a model's layers are: stack -> the qualified name of its ModuleList (layer i is f'{path}.{i}', its row
    f'{stack}.{i}')."""

    paths: dict[str, str]

    def token(self, charge: Charge) -> tuple[tuple, int | None]:
        module, group, phase, nbytes = charge
        stack, _, index = group.rpartition(".")
        if stack in self.paths and index.isdigit():
            prefix = f"{self.paths[stack]}.{index}"
            if module == prefix or module.startswith(prefix + "."):
                return ("L", stack, module[len(prefix):], phase, nbytes), int(index)
        return ("O", module, group, phase, nbytes), None

    def charge(self, token: tuple, index: int | None) -> Charge:
        if token[0] == "O":
            return token[1:]
        _l, stack, suffix, phase, nbytes = token
        return f"{self.paths[stack]}.{index}{suffix}", f"{stack}.{index}", phase, nbytes


@dataclass
class ChargesModel:
    depth: int
    layers: Layers
    base: list[tuple]
    inserts: list[tuple[int, list]]
    rules: dict[tuple, tuple]  # site -> ("fixed",) | ("shift",) | ("fwd", k) | ("bwd", k)
    base_index: list[int | None]

    def charges(self, n: int) -> list[Charge]:
        J = n - self.depth
        if J < 0:
            raise ValueError(f"depth {n} is below the model's {self.depth}")
        items, coords = expand(self.base, self.inserts, J)
        return [self.layers.charge(tok, self._index(coord, J)) for item, coord in zip(items, coords, strict=True)
                for tok in item]

    def _index(self, coord: tuple, J: int) -> int | None:
        if coord[0] == "base":
            l = self.base_index[coord[1]]  # noqa: E741 - a layer number
            if l is None:
                return None
            return l + J if self.rules[("base", coord[1])] == ("shift",) else l
        _b, i, c, o = coord
        rule = self.rules.get(("blk", i, o))
        if rule is None:  # a block token outside every layer
            return None
        return rule[1] + (c if rule[0] == "fwd" else J - 1 - c)


def fit_charges(charges: dict[int, list[Charge]], layers: Layers) -> ChargesModel:
    """The ChargesModel of the charges at consecutive depths (as membench.depth.trace.fit_depth's: the deepest checks
    what the others taught); NotAligned where they do not extrapolate."""
    depths = sorted(charges)
    a = depths[0]
    learn = len(depths) - 2
    if learn < LEARN:
        raise NotAligned(f"charges at {LEARN + 2} or more depths are needed, got {depths}")
    toks = {d: _by_layer([layers.token(c) for c in charges[d]]) for d in depths}
    kinds = {d: [t for t, _ in toks[d]] for d in depths}
    inserts = periodic(kinds[a], [kinds[a + J] for J in range(1, learn + 2)], "saved tensors")
    base_index = [i for _, i in toks[a]]
    seen: dict[tuple, list] = {}
    for J in range(1, learn + 1):
        _items, coords = expand(kinds[a], inserts, J)
        for coord, (_tok, index) in zip(coords, toks[a + J], strict=True):
            if index is None:
                continue
            site = ("base", coord[1]) if coord[0] == "base" else ("blk", coord[1], coord[3])
            seen.setdefault(site, []).append((coord, J, index))
    rules = {site: _pick(site, obs, base_index) for site, obs in seen.items()}
    model = ChargesModel(a, layers, kinds[a], inserts, rules, base_index)
    for J in range(1, learn + 2):  # every depth rebuilt; the deepest was not used to learn the rules
        if model.charges(a + J) != charges[a + J]:
            raise Undetermined(f"the layer numbers of the saved tensors do not rebuild depth {a + J}")
    return model


def _by_layer(tokens: list[tuple[tuple, int | None]]) -> list[tuple[tuple, int | None]]:
    """Runs of consecutive tokens of one layer (or of none) as items: (tokens, layer)."""
    out: list[tuple[list, int | None]] = []
    for tok, index in tokens:
        if out and out[-1][1] == index:
            out[-1][0].append(tok)
        else:
            out.append(([tok], index))
    return [(tuple(toks), index) for toks, index in out]


def _pick(site: tuple, observations: list, base_index: list) -> tuple:
    if site[0] == "base":
        l = base_index[site[1]]  # noqa: E741 - a layer number
        options = [("fixed",), ("shift",)]
        for rule in options:
            if all(index == (l + J if rule == ("shift",) else l) for _coord, J, index in observations):
                return rule
        raise NotAligned(f"the layer of the saved tensor at {site} is neither fixed nor shifted by the new layers")
    (_b, _i, c, _o), J, index = observations[0]
    for rule in (("fwd", index - c), ("bwd", index - (J - 1 - c))):
        if all(idx == rule[1] + (cc[2] if rule[0] == "fwd" else jj - 1 - cc[2]) for cc, jj, idx in observations):
            return rule
    raise NotAligned(f"the layers of the saved tensors at {site} are not in forward or backward order")


def affine(values: dict[int, int | float], what: str):
    """A figure at every depth from its values at consecutive depths, where it grows by the same amount per layer
    (parameter bytes, optimizer state, SDPA calls): (base depth, base value, per layer); NotAligned otherwise."""
    depths = sorted(values)
    a = depths[0]
    step = values[a + 1] - values[a]
    if any(values[d] != values[a] + (d - a) * step for d in depths):
        raise NotAligned(f"{what} does not grow by the same amount per layer")
    return lambda n: values[a] + (n - a) * step
