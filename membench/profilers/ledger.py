"""Saved-tensor ledger: the bytes each module saves for backward.

    forward:   op -> pack(t) -----> ledger: storage seen before?  no -> charge module on top of the stack
    backward:  recompute (checkpoint, MEFT) packs again ------> charged to the same module, phase "recompute"

How it decides what to count (each rule was measured, see profiling-notes):
- one charge per *storage*, not per save: a LayerNorm output read by q, k and v
  is packed three times but costs memory once. Storages are the keys of a
  WeakIdKeyDictionary (the same Python object for every view, on cpu/meta/fake).
- parameters and buffers are registered first and never charged (`weight.t()`
  shares the weight's storage); model inputs are charged apart (`input_bytes`);
  a copy of a weight made by autocast or a cast is charged apart
  (`weight_copy_bytes`) when a live tracker tells us about it.
- the module charged is the innermost module whose forward is running
  (module pre/post hooks keep the stack); saves outside any module go to
  the group "outside".
- only the innermost saved-tensor hooks apply: while the ledger is active it
  wraps hooks that others push (non-reentrant checkpointing) so it still sees
  what they save. What a checkpoint *discards* in forward is not charged;
  what it saves during its recompute is, as phase "recompute".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.weak import WeakIdKeyDictionary

from .weights import weight_tensors

FORWARD, RECOMPUTE = "forward", "recompute"


@dataclass
class Charge:
    nbytes: int
    module: str
    group: str
    phase: str
    saves: int = 1


@dataclass
class LedgerReport:
    """What the ledger found; plain data, safe to keep after the model is gone."""

    by_group: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> {phase: bytes}
    by_module: dict[str, dict[str, int]] = field(default_factory=dict)  # module -> {phase: bytes}
    input_bytes: int = 0
    weight_copy_bytes: int = 0
    saves: int = 0  # pack calls seen (before de-duplication)
    charges: list[tuple[str, str, str, int]] = field(default_factory=list)  # (module, group, phase, bytes), in order

    def total(self, phase: str = FORWARD) -> int:
        return sum(v.get(phase, 0) for v in self.by_group.values())

    @classmethod
    def of_charges(cls, charges: list[tuple[str, str, str, int]], **figures) -> LedgerReport:
        """The report of charges (module, group, phase, bytes) in the order they were made: rows and modules in
        order of their first charge. `figures`: input_bytes, weight_copy_bytes, saves."""
        by_group: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        by_module: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for module, group, phase, nbytes in charges:
            by_group[group][phase] += nbytes
            by_module[module][phase] += nbytes
        return cls(by_group={g: dict(v) for g, v in by_group.items()},
                   by_module={m: dict(v) for m, v in by_module.items()}, charges=list(charges), **figures)


class SavedTensorLedger:
    """Context manager measuring saved-for-backward bytes of any `nn.Module`.

    `groups` maps modules to report rows (e.g. every module of layer 3 ->
    "layers.3"); modules not in it are reported under their own name's first
    component. Set `.phase` to RECOMPUTE around backward.
    """

    def __init__(self, model: torch.nn.Module, groups: dict[torch.nn.Module, str] | None = None,
                 inputs: tuple[torch.Tensor, ...] = (), is_weight_copy=None):
        self.model = model
        self.phase = FORWARD
        self.recording = True  # False: saves pass through uncounted (a step's later micro-steps)
        self._is_weight_copy = is_weight_copy
        self._names = {id(m): n or "<root>" for n, m in model.named_modules()}
        self._groups = {id(m): g for m, g in (groups or {}).items()}
        self._stack: list[int] = []
        self._handles = []
        self._skip = WeakIdKeyDictionary()  # storage -> "param" | "input"
        self._seen = WeakIdKeyDictionary()  # storage -> Charge
        self._inputs = inputs
        self.charges: list[Charge] = []
        self.input_bytes = 0
        self.weight_copy_bytes = 0
        self.saves = 0
        self._hooks = saved_tensors_hooks(self._pack, _unpack)
        self._orig_enter = None

    # ---- module stack ------------------------------------------------------
    def _pre(self, module, args):
        self._stack.append(id(module))

    def _post(self, module, args, output):
        if self._stack and self._stack[-1] == id(module):
            self._stack.pop()

    def _where(self) -> tuple[str, str]:
        if not self._stack:
            return "<outside>", "outside"
        mid = self._stack[-1]
        name = self._names.get(mid, "<unknown>")
        group = self._groups.get(mid)
        if group is None:
            group = name.split(".")[0] if name != "<root>" else "outside"
        return name, group

    # ---- saved-tensor hooks ------------------------------------------------
    def _pack(self, t: torch.Tensor):
        self._observe(t)
        return t.detach()  # no reference cycle through grad_fn (torch's own advice)

    def _observe(self, t: torch.Tensor) -> None:
        if not self.recording:  # (a later micro-step: the first one's saves are the figures)
            return
        self.saves += 1
        st = t.untyped_storage()
        if st in self._skip:
            return
        if st in self._seen:
            self._seen[st].saves += 1
            return
        nbytes = st.nbytes()
        if self._is_weight_copy is not None and self._is_weight_copy(st):
            self._skip[st] = "weight_copy"
            self.weight_copy_bytes += nbytes
            return
        module, group = self._where()
        charge = Charge(nbytes, module, group, self.phase)
        self._seen[st] = charge
        self.charges.append(charge)

    # Others' saved-tensor hooks (checkpointing) would hide saves from us: wrap them.
    def _wrapped_enter(self, hooks: saved_tensors_hooks) -> None:
        pack = hooks.pack_hook
        if type(hooks).__name__ == "_checkpoint_hook":
            wrapped = pack  # forward of a checkpointed region: the tensor is dropped, not kept
        else:
            def wrapped(x, _pack=pack):
                self._observe(x)
                return _pack(x)
        torch._C._autograd._push_saved_tensors_default_hooks(wrapped, hooks.unpack_hook)

    # ---- context -----------------------------------------------------------
    def __enter__(self) -> SavedTensorLedger:
        for w in weight_tensors(self.model):  # parameters (and what they hold: a quantized weight's scales), buffers
            self._skip[w.untyped_storage()] = "param"
        for t in self._inputs:
            if isinstance(t, torch.Tensor) and t.untyped_storage() not in self._skip:
                self._skip[t.untyped_storage()] = "input"
                self.input_bytes += t.untyped_storage().nbytes()
        for m in self.model.modules():
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post, always_call=True))
        self._orig_enter = saved_tensors_hooks.__enter__
        ledger = self

        def enter(hooks):
            if hooks is ledger._hooks:
                ledger._orig_enter(hooks)
            else:
                ledger._wrapped_enter(hooks)

        saved_tensors_hooks.__enter__ = enter
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        saved_tensors_hooks.__enter__ = self._orig_enter
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._stack.clear()

    # ---- results -----------------------------------------------------------
    def report(self) -> LedgerReport:
        return LedgerReport.of_charges([(c.module, c.group, c.phase, c.nbytes) for c in self.charges],
                                       input_bytes=self.input_bytes, weight_copy_bytes=self.weight_copy_bytes,
                                       saves=self.saves)


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t
