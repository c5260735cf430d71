"""A deep model's profile from profiles of shallow copies of it: exact, or not used (membench.depth).

    spec (N layers) ──> the same spec at depths a .. a+4 (every non-layer part as in the full model)
                    ──> each profiled as usual: its time line, its saved-tensor charges, its figures
                    ──> membench.depth: one more layer inserts the same events; rules learned on a+1..a+3,
                        checked on a+4 (unseen) ──> depth N's time line and charges, synthesized
                    ──> the figures a full profile derives from them (ledger, live peaks, allocator replay)

Where the shallow profiles do not align (layers that differ, a tensor whose size grows with the depth), the
caller profiles the whole model and says why (`provenance.extrapolation`). Only fake runs extrapolate: a real
device measures the model it runs.

`replays(spec)` goes on to any batch size (membench.depth.batch: every size affine in it), for `membench fit`'s
search: the depth model at batch size 2, depth a+1 at 3 and 4, each probe a replay through the allocator model.
"""

from __future__ import annotations

import dataclasses
import re
import time

from ..backends import runs_real_tensors
from ..depth.ledger import Layers, affine, fit_charges
from ..depth.trace import LEARN, NotAligned, expand, fit_depth, periodic
from ..devices import default_device
from ..errors import UserError
from ..spec import RunSpec

SHALLOW = 2  # the base depth: depth 1 does not align for some methods (checkpointed llama: a free's rule)
DEPTHS = LEARN + 2  # profiles: the base, LEARN to learn from, one to check
MORE = 1  # a profile added where those do not align: a free reaching further back than the copies learned from
# A profile costs about 2 layers' time besides its layers (building, embeddings, head, loss: llama-2-7b lora b8
# s512 on 2 cores, 0.31 s at 2 layers, 0.41 s at 3, 1.8 s at 12), so the shallow profiles cost what a full one of
# this many layers does (the full model's structure check, a meta build, about one layer more):
OVERHEAD_LAYERS = 2
WORTH_IT = sum(range(SHALLOW, SHALLOW + DEPTHS)) + (DEPTHS - 1) * OVERHEAD_LAYERS

# figures that grow by the same amount per layer (checked on every depth)
_AFFINE = ("param_bytes", "trainable_param_bytes", "buffer_bytes", "grad_bytes", "optimizer_bytes", "input_bytes",
           "num_params", "num_trainable_params", "paged_bytes")
# figures every depth must share
_SAME = ("phases", "optimizer_name", "loss_kind", "loss")


@dataclasses.dataclass
class Shallow:
    """One shallow profile: what extrapolation needs of it."""

    step: object  # StepProfile
    trace: object  # AllocationTrace
    layers: Layers
    order: list[str]
    config: dict
    described: RunSpec
    input_shape: list
    backend: object
    plan: object
    sdpa: dict
    structure: tuple  # (each layer's signature, everything else's): what check_structure compares


def plan(spec: RunSpec) -> tuple[int, dict[int, RunSpec]]:
    """(layers per stack, the spec at each shallow depth); 0 layers where the stacks differ in depth (BART with
    more encoder than decoder layers: they cannot grow together). Each shallow spec sets every layer-count key of
    the config, last (an override of the same key under another name, the config's attribute_map, is dropped:
    GPT-2's num_hidden_layers is its n_layer)."""
    from .. import backbones
    from .building import model_config

    config = model_config(spec)
    keys = tuple(backbones.family_for(config.model_type).num_layers_key(config))
    aliases = dict(getattr(config, "attribute_map", {}))
    counts = {int(getattr(config, k, 0) or 0) for k in keys}
    kept = {k: v for k, v in spec.overrides.items() if k not in keys and aliases.get(k) not in keys}
    specs = {d: spec.replace(overrides={**kept, **dict.fromkeys(keys, d)})
             for d in range(SHALLOW, SHALLOW + DEPTHS + MORE)}
    return (counts.pop() if len(counts) == 1 else 0), specs


def why_not(spec: RunSpec, layers: int, *, exact: bool, track_live: bool) -> str | None:
    """Why `spec` is profiled in full rather than extrapolated (None: it is extrapolated)."""
    if exact:
        return "--exact: the whole model was profiled"
    device = spec.device or default_device()  # (None: the default, which is cuda where a GPU is)
    if runs_real_tensors(device):
        return f"--device {device} measures the whole model"
    if not track_live:
        return "extrapolation needs the live tracker (track_live) and no snapshot"
    if not layers:
        return "profiled in full: its stacks differ in depth"
    if layers <= WORTH_IT:
        return (f"{layers} layers: profiled in full (profiles at depths {SHALLOW}-{SHALLOW + DEPTHS - 1} cost as "
                f"much up to {WORTH_IT} layers)")
    return None


def profile(spec: RunSpec, depth: int, specs: dict[int, RunSpec], progress=None, t0: float | None = None):
    """The RunResult of `spec` (`depth` layers) from profiles of `specs` (membench.runner.run's, when `plan` and
    `why_not` say so); NotAligned where that cannot be exact."""
    t0 = time.perf_counter() if t0 is None else t0
    say = progress or (lambda _msg: None)
    shallow = profile_shallow(dict(list(specs.items())[:DEPTHS]), depth, progress)
    check_structure(spec, shallow, depth)
    say(f"extrapolating to {depth} layers")
    result = extrapolate_from(shallow, specs, spec, depth, progress, t0)
    result.provenance.update(extrapolated=True, extrapolation=f"{depth} layers from profiles at depths "
                             f"{min(shallow)}-{max(shallow)}, exact (--exact profiles them all)")
    return result


def extrapolate_from(shallow: dict[int, Shallow], specs: dict[int, RunSpec], spec: RunSpec, depth: int, progress=None,
                     t0: float = 0.0):
    """extrapolate(), with more shallow profiles where the first ones do not tell (`learned`)."""
    return learned(shallow, specs, depth, progress, lambda some: extrapolate(some, spec, depth, t0))


def learned(shallow: dict[int, Shallow], specs: dict[int, RunSpec], depth: int, progress, fn):
    """fn(shallow profiles); where they do not align, the rest of `specs` is profiled too (added to `shallow`) and
    fn tried on all of them: one more depth to learn a free's rule from (one that reaches back further than the
    copies learned from), the deepest still unseen."""
    try:
        return fn(shallow)
    except NotAligned:
        more = {d: s for d, s in specs.items() if d not in shallow}
        if not more:
            raise
        shallow.update(profile_shallow(more, depth, progress))
    return fn(shallow)


def profile_shallow(specs: dict[int, RunSpec], depth: int, progress=None) -> dict[int, Shallow]:
    """Each shallow spec profiled as a run profiles it, and what extrapolation needs of it."""
    from . import _profiled_step
    from .building import layer_count
    from .module import batch_shape

    say = progress or (lambda _msg: None)
    shallow = {}
    for i, (d, shallow_spec) in enumerate(specs.items(), 1):
        say(f"profiling {d} of {depth} layers ({i}/{len(specs)}; extrapolated exactly from these)")
        try:
            step, built, backend, plan, order = _profiled_step(shallow_spec)
        except UserError as exc:  # (MEFT's frozen_bottom=8 on 2 layers): the full model may still be valid
            raise NotAligned(f"a {d}-layer copy cannot be built ({exc})") from None
        if layer_count(built.family, built.config) != d * len(built.family.num_layers_key(built.config)):
            raise NotAligned(f"the overrides do not make a {d}-layer model")
        layers = layer_paths(built.model, built.family, built.base)
        shallow[d] = Shallow(
            step=step, trace=backend.allocation_trace(step), layers=layers, order=order,
            config=built.config.to_dict(), described=built.described(), input_shape=batch_shape(built.batch)[2],
            backend=backend, plan=plan, sdpa=dict(backend.routing.choices) if backend.routing is not None else {},
            structure=structure(built.model, layers))
    return shallow


def check_structure(spec: RunSpec, shallow: dict[int, Shallow], depth: int) -> None:
    """The full model (built on `meta`, not run) must be what the shallow ones extrapolate to: its layers the
    shallow layers' pattern with more middle layers, everything else the same. Else (a layer made different, a
    method on some layers only, a part sized by the depth) NotAligned: the shallow profiles never saw it."""
    from .building import build

    built = build(spec, inputs=False)
    full = structure(built.model, layer_paths(built.model, built.family, built.base))
    depths = sorted(shallow)
    a = depths[0]
    if any(shallow[d].structure[1] != full[1] for d in depths):
        raise NotAligned("the parts outside the layers differ with the depth")
    inserts = periodic(shallow[a].structure[0], [shallow[d].structure[0] for d in depths[1:]], "modules")
    if expand(shallow[a].structure[0], inserts, depth - a)[0] != full[0]:
        raise NotAligned(f"the {depth}-layer model's layers are not the shallow ones' repeated (one differs)")


def structure(model, layers: Layers) -> tuple[list, tuple]:
    """(each layer's signature in order, the signature of everything outside the layers): module types, their
    plain attributes (a layer's own index left out), parameters (shape, dtype, trained, what they hold),
    buffers and hooks."""
    from ..profilers.weights import attached

    inside = {f"{path}.{i}" for path in layers.paths.values()
              for i in range(len(model.get_submodule(path)))}
    per_layer: dict[str, list] = {name: [] for name in sorted(inside, key=_natural)}
    rest = []
    for name, m in model.named_modules():
        owner = next((p for p in _prefixes(name) if p in inside), None)
        sig = _signature(name[len(owner):] if owner else name, m, attached)
        (per_layer[owner] if owner else rest).append(sig)
    return [tuple(v) for v in per_layer.values()], tuple(rest)


_INDEX = re.compile(r"(^|_)(idx|index|id)$")  # a layer's own number (layer_idx, meft_index): differs by design


def _signature(name: str, m, attached) -> tuple:
    plain = tuple(sorted((k, v) for k, v in vars(m).items() if not _INDEX.search(k) and not k.startswith("_")
                         and (v is None or isinstance(v, int | float | str | bool))))
    own = tuple(sorted((k, getattr(v, "__qualname__", type(v).__name__)) for k, v in vars(m).items()
                       if k in ("forward", "__call__")))
    params = tuple((k, tuple(p.shape), str(p.dtype), p.requires_grad, tuple(tuple(t.shape) for t in attached(p)))
                   for k, p in m._parameters.items() if p is not None)
    buffers = tuple((k, tuple(b.shape), str(b.dtype)) for k, b in m._buffers.items() if b is not None)
    hooks = tuple(len(getattr(m, h, ())) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))
    return (name, type(m).__qualname__, plain, own, params, buffers, hooks)


def _prefixes(name: str):
    parts = name.split(".")
    return (".".join(parts[:k]) for k in range(len(parts), 0, -1))


def _natural(name: str):
    return [int(x) if x.isdigit() else x for x in name.split(".")]


def layer_paths(model, family, base) -> Layers:
    """Where each stack's layers are in `model` (layer i is f'{path}.{i}'), or NotAligned."""
    names = {id(m): n for n, m in model.named_modules()}
    paths = {}
    for stack, layers in family.stacks(base).items():
        qualified = [names.get(id(layer), "") for layer in layers]
        path = qualified[0].rpartition(".")[0] if qualified else ""
        if any(q != f"{path}.{i}" for i, q in enumerate(qualified)):
            raise NotAligned(f"the layers of {stack} are not one ModuleList's items")
        paths[stack] = path
    return Layers(paths)


def extrapolate(shallow: dict[int, Shallow], spec: RunSpec, depth: int, t0: float):
    """The RunResult of `spec` at `depth` layers from its shallow profiles, or NotAligned."""
    from ..gpu.predict import first_step_phase
    from ..profilers.ledger import FORWARD, RECOMPUTE, LedgerReport
    from ..profilers.live import live_peaks
    from ..profilers.step import estimated_peak
    from .building import model_config
    from .summary import to_result

    depths = sorted(shallow)
    first = shallow[depths[0]]
    for what in _SAME:
        if len({repr(getattr(shallow[d].step, what)) for d in depths}) > 1:
            raise NotAligned(f"the step's {what.replace('_', ' ')} differs between depths")
    for what in ("input_shape", "layers"):
        if len({repr(getattr(shallow[d], what)) for d in depths}) > 1:
            raise NotAligned(f"the {what.replace('_', ' ')} differs between depths")
    if len({repr(shallow[d].described.method_options) for d in depths}) > 1:
        raise NotAligned("the method's options depend on the depth")
    trace = fit_depth({d: shallow[d].trace for d in depths}).trace(depth)
    charges = fit_charges({d: shallow[d].step.ledger.charges for d in depths}, first.layers).charges(depth)
    grow = {what: affine({d: getattr(shallow[d].step, what) for d in depths}, what)(depth) for what in _AFFINE}
    ledgers = {d: shallow[d].step.ledger for d in depths}
    ledger = LedgerReport.of_charges(charges, **{what: affine({d: getattr(ledgers[d], what) for d in depths}, what)(
        depth) for what in ("input_bytes", "weight_copy_bytes", "saves")})
    phases = list(first.step.phases)
    grads = {r for r, m in trace.marks.items() if m == "grad"}
    state = {r for r, m in trace.marks.items() if m == "state"} | set(trace.host)
    peaks = live_peaks(trace.sizes, trace.events, grads=grads, state=state,
                       first_step=[p for p in phases if first_step_phase(p)])
    step = dataclasses.replace(
        first.step, ledger=ledger, activation_bytes=ledger.total(FORWARD), recompute_bytes=ledger.total(RECOMPUTE),
        peak_activation_bytes=peaks.activation.bytes, peak_phase=peaks.activation.phase, peak_by_phase=peaks.by_phase,
        estimated_peak_bytes=estimated_peak(grow["param_bytes"], grow["buffer_bytes"], grow["input_bytes"],
                                            grow["optimizer_bytes"], peaks.step_bytes),
        prestep_bytes=trace.prestep, live=None, marks=trace.marks, trace=trace, **grow)
    result = to_result(step, _order(first.order, first.layers, depth), spec.replace(
        model=first.described.model, seq_len=first.described.seq_len, method_options=first.described.method_options),
        first.backend, plan=first.plan, wall_s=time.perf_counter() - t0,
        extra={"config": _config(shallow, model_config(spec).to_dict()), "pretrained": spec.pretrained},
        input_shape=first.input_shape)
    if result.predicted_cuda is not None:
        keys = {k for d in depths for k in shallow[d].sdpa}
        sdpa = {k: affine({d: shallow[d].sdpa.get(k, 0) for d in depths}, f"SDPA calls ({k})")(depth) for k in keys}
        order = [k for d in depths for k in shallow[d].sdpa]  # first-seen order, as the Counter keeps it
        result.predicted_cuda = dataclasses.replace(
            result.predicted_cuda, sdpa_backends={k: sdpa[k] for k in dict.fromkeys(order) if sdpa[k]})
    return result


def _order(order: list[str], layers: Layers, depth: int) -> list[str]:
    """The report's rows at `depth`: each stack's rows renumbered."""
    out: list[str] = []
    for row in order:
        stack, _, index = row.rpartition(".")
        if stack in layers.paths and index.isdigit():
            if index == "0":
                out += [f"{stack}.{i}" for i in range(depth)]
            continue
        out.append(row)
    return out


def _config(shallow: dict[int, Shallow], full: dict) -> dict:
    """The config as a full run states it: the shallowest one's, where what changes with the depth (the layer
    counts) is the full config's."""
    depths = sorted(shallow)
    a, b = shallow[depths[0]].config, shallow[depths[1]].config
    return {k: full.get(k) if b.get(k) != v else v for k, v in a.items()}


# ---- any batch size: a fit's search over replays --------------------------------------------------------------

BATCHES = (2, 3, 4)  # the batch sizes a replay model learns from (b1's at every shallow depth, b2 and b3 at a+1)
# replays need 9 shallow profiles (depths 2-6, two more batch sizes, two checks: about 32 layers and 9 profiles'
# overheads); a search profiles the whole model about 5 times: they pay off from about this many layers
REPLAYS_FROM = 10


@dataclasses.dataclass
class Replays:
    """Predicted steady-state max reserved bytes of `spec` (its depth) at any batch size: the depth model's time line
    with every size at that batch size, replayed through the allocator model (membench.depth.batch)."""

    model: object  # BatchDepthModel
    depth: int
    phases: list[str]
    backend: object  # a CUDA target's: its allocator settings replay the traces
    check_spec: RunSpec  # depth a+1: what `check` profiles

    def trace(self, b: int):
        return self.model.trace(self.depth, b)

    def reserved(self, b: int) -> int:
        return self.backend.replay(self.trace(b), self.phases).max_reserved_bytes

    def check(self, b: int) -> None:
        """Profile depth a+1 at batch size b: its time line must be the model's, event for event (every place's
        size at b: what `reserved(b)` replays at full depth); NotAligned otherwise."""
        from . import _profiled_step

        spec = self.check_spec.replace(batch_size=b)
        step, _built, backend, _plan, _order = _profiled_step(spec)
        real = backend.allocation_trace(step)
        if dataclasses.asdict(real) != dataclasses.asdict(self.model.trace(self.model.depth_model.depth + 1, b)):
            raise NotAligned(f"a profile at batch size {b} differs from the sizes learned at {BATCHES}")


def replays(spec: RunSpec, progress=None) -> Replays:
    """The Replays of `spec` (fake, CUDA target; its batch size is ignored): profiles at depths a..a+4 (a+5 where
    needed) at batch size BATCHES[0], the full model's structure checked, and depth a+1 at the other two."""
    from ..depth.batch import fit_batch

    b1, b2, b3 = BATCHES
    depth, specs = plan(spec.replace(batch_size=b1))
    if depth < SHALLOW:
        raise NotAligned(f"{depth} layers: fewer than the shallowest profile's {SHALLOW}" if depth else
                         "its stacks differ in depth")
    shallow = profile_shallow(dict(list(specs.items())[:DEPTHS]), depth, progress)
    check_structure(spec.replace(batch_size=b1), shallow, depth)
    model = learned(shallow, specs, depth, progress, lambda some: fit_depth({d: x.trace for d, x in some.items()}))
    a1 = model.depth + 1
    traces = {b1: shallow[a1].trace}
    for b in (b2, b3):
        (progress or (lambda _msg: None))(f"profiling {a1} layers at batch size {b}")
        step, _built, backend, _plan, _order = _profiled_step_of(specs[a1].replace(batch_size=b))
        traces[b] = backend.allocation_trace(step)
    first = shallow[min(shallow)]
    return Replays(fit_batch(model, traces), depth, list(first.step.phases), first.backend, specs[a1])


def _profiled_step_of(spec: RunSpec):
    from . import _profiled_step

    try:
        return _profiled_step(spec)
    except UserError as exc:
        raise NotAligned(f"a shallow copy cannot be profiled ({exc})") from None
