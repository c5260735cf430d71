"""Live-memory tracker: every storage an op creates, from birth until it is freed.

A TorchDispatchMode sees each op's outputs; a weak reference on each new
storage tells us when it dies (storages keep their Python object alive as long
as the C++ storage lives, so the callback fires exactly at free). This works
on real CPU/CUDA tensors and on fake tensors (where nothing is allocated), and
during backward, so memory that recomputing methods need is charged too.

Events are kept as a time line; `peak()` replays it, optionally leaving out
storages that turned out to be persistent (parameter gradients, optimizer
state), which is how activation+temporary peaks are separated from the
breakdown's other terms.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_CASTS = {"_to_copy", "to", "clone", "_autocast_to_reduced_precision", "_autocast_to_full_precision"}


@dataclass
class Peak:
    bytes: int
    phase: str
    event: int


class LiveMemoryTracker(TorchDispatchMode):
    """Usage: `with tracker: step()`; set `tracker.phase` as the step moves on."""

    def __init__(self, known: list[torch.Tensor] = (), weights: list[torch.Tensor] | None = None,
                 host_device: str | None = None):
        """`known`: tensors allocated before the step (never tracked). `weights`: those of them
        whose casts/copies are weight copies (parameters, buffers); default: all of `known`.
        Pass model inputs in `known` only: a cast of an input is an activation, not a weight copy.
        `host_device`: storages on this device type are host memory (`host_ids`), e.g. "cpu"
        when the step runs on a GPU."""
        super().__init__()
        self.phase = "forward"
        self._host_device = host_device
        self.host_ids: set[int] = set()  # records in host memory (see host_device, mark_host)
        # Keyed by id(storage object): the object lives exactly as long as the storage (see the
        # module doc), and each entry is removed by that object's weakref callback, so an id is
        # never looked up after it could be reused. Plain dicts: this runs once per op.
        self._live: dict[int, int] = {}  # id(storage) -> record id, while it lives
        self._ignore: dict[int, weakref.ref] = {}  # parameters, buffers, inputs: allocated before the step
        self._weights: dict[int, weakref.ref] = {}  # parameters, buffers: their casts are weight copies
        self.weight_copy_ids: set[int] = set()  # records that are copies/casts of weights
        self._refs: dict[int, weakref.ref] = {}
        self._cast_ops: dict[object, bool] = {}
        self.sizes: list[int] = []
        self.events: list[tuple[int, int, str]] = []  # (+/-1, record id, phase)
        for t in known:
            self._remember(self._ignore, t.untyped_storage())
        for t in known if weights is None else weights:
            self._remember(self._weights, t.untyped_storage())

    @staticmethod
    def _remember(table: dict, st) -> None:
        key = id(st)
        table[key] = weakref.ref(st, lambda _r, key=key, table=table: table.pop(key, None))

    # ---- tracking ---------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            tensors = (out,)
        elif isinstance(out, tuple | list) and not any(isinstance(o, tuple | list | dict) for o in out):
            tensors = [t for t in out if isinstance(t, torch.Tensor)]
        else:
            tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not tensors:
            return out
        is_cast = self._cast_ops.get(func)
        if is_cast is None:
            is_cast = self._cast_ops[func] = func.__name__.split(".")[0] in _CASTS
        from_weight = False
        if is_cast and args and isinstance(args[0], torch.Tensor):
            key = id(args[0].untyped_storage())
            from_weight = key in self._weights or self._live.get(key, -1) in self.weight_copy_ids
        for t in tensors:
            self._track(t.untyped_storage(), from_weight)
        return out

    def _track(self, st, from_weight: bool) -> None:
        key = id(st)
        if key in self._live or key in self._ignore:
            return
        rid = len(self.sizes)
        self._live[key] = rid
        self.sizes.append(st.nbytes())
        self.events.append((1, rid, self.phase))
        if self._host_device is not None and st.device.type == self._host_device:
            self.host_ids.add(rid)
        if from_weight:
            self.weight_copy_ids.add(rid)
        self._refs[rid] = weakref.ref(st, lambda _r, rid=rid, key=key: self._free(rid, key))

    def _free(self, rid: int, key: int) -> None:
        self._refs.pop(rid, None)
        self._live.pop(key, None)
        self.events.append((-1, rid, self.phase))

    def is_weight_copy(self, storage) -> bool:
        return self._live.get(id(storage), -1) in self.weight_copy_ids

    def record_id(self, tensor: torch.Tensor) -> int | None:
        return self._live.get(id(tensor.untyped_storage()))

    def mark_host(self, tensor: torch.Tensor) -> None:
        """Say that `tensor`'s storage lives in host memory on the device being modelled."""
        rid = self.record_id(tensor)
        if rid is not None:
            self.host_ids.add(rid)

    @property
    def event_count(self) -> int:
        """Events so far: a position on the time line (for events other profilers add beside it)."""
        return len(self.events)

    # ---- results ----------------------------------------------------------
    def live_bytes(self, exclude: set[int] = frozenset()) -> int:
        return sum(self.sizes[r] for r in self._refs if r not in exclude)

    def peak(self, exclude: set[int] = frozenset(), phases: tuple[str, ...] | None = None) -> Peak:
        """Highest live total over the time line (or the part of it in `phases`)."""
        return peak(self.sizes, self.events, exclude, phases)

    def peaks_by_phase(self, exclude: set[int] = frozenset()) -> dict[str, int]:
        return peaks_by_phase(self.sizes, self.events, exclude)


# ---- a time line's figures: (sizes, events) as the tracker records them, or as membench.depth synthesizes them ----


def peak(sizes: list[int], events, exclude=frozenset(), phases: tuple[str, ...] | None = None) -> Peak:
    """Highest live total over the time line (or the part of it in `phases`), records in `exclude` left out."""
    cur = best = 0
    best_phase, best_i = "", -1
    for i, (sign, rid, phase) in enumerate(events):
        if rid in exclude:
            continue
        cur += sign * sizes[rid]
        if cur > best and (phases is None or phase in phases):
            best, best_phase, best_i = cur, phase, i
    return Peak(best, best_phase, best_i)


def peaks_by_phase(sizes: list[int], events, exclude=frozenset()) -> dict[str, int]:
    cur = 0
    out: dict[str, int] = {}
    for sign, rid, phase in events:
        if rid in exclude:
            continue
        cur += sign * sizes[rid]
        out[phase] = max(out.get(phase, 0), cur)
    return out


@dataclass
class LivePeaks:
    """The step's figures from its time line: activations + temporaries (forward and backward of the first step,
    gradients and optimizer state left out), their peak per phase, and the first step's peak with its gradients."""

    activation: Peak
    by_phase: dict[str, int]
    step_bytes: int


def live_peaks(sizes: list[int], events, *, grads: set[int], state: set[int], first_step: list[str]) -> LivePeaks:
    """`grads`: the first step's gradient records; `state`: the optimizer state's and host memory's; `first_step`:
    the phases of the first step (its micro-steps too)."""
    act = peak(sizes, events, exclude=grads | state, phases=("forward", "backward"))
    step = peak(sizes, events, exclude=state, phases=tuple(first_step)).bytes
    by_phase = {k: v for k, v in peaks_by_phase(sizes, events, exclude=grads | state).items() if k in first_step}
    return LivePeaks(act, by_phase, step)
