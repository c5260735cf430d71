"""Will it fit on my GPU? The largest batch size per method (and sequence length), predicted without a GPU.

For each (method, sequence length) a search over batch sizes runs fake-tensor profiles
with a CUDA target (membench.runner.profile). A batch size fits when the predicted
steady-state `max_memory_reserved` (allocator model, two training steps) plus the CUDA
context stays within the GPU's memory less the headroom:

    fits(b)  <=>  predicted_max_reserved(b) + context  <=  memory * (1 - headroom)

Memory grows about linearly in b, so the search aims each probe where the line through
the costs known so far meets the budget (`search_batch`): typically four profiles per row
(b = 1, 8, the estimate and its neighbour) instead of one per batch size.

Each probe is a replay, not a profile, where the row's shallow profiles allow it
(membench.runner.extrapolated.replays: profiles at depths 2-6 at batch size 2, depth 3 at 3 and
4; every size affine in the batch size, checked): milliseconds per batch size. The answer is
then checked by profiles at the answer and the next batch size, which must equal the model's
prediction event for event; where anything does not align, the row's probes are profiles
(`Search(exact=True)` always: `membench fit --exact`). `FitRow.searched` says which.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .errors import UserError
from .spec import RunSpec

# of `membench fit --out`'s JSON (a run's JSON has its own: membench.result). 2: the file's "quant" (the base of
# --quant) and each row's "quant" (its base: --quants; "" plain). 3: each row's "searched" (replays | profiles) and
# "note" (why profiles)
SCHEMA_VERSION = 3
Probed = Callable[[str, int, int, int, bool], None]  # (method, seq, batch, predicted peak bytes, fits)


@dataclass
class FitRow:
    model: str
    method: str
    seq_len: int
    gpu: str
    dtype: str
    max_batch_size: int  # 0: even batch size 1 does not fit
    predicted_max_reserved_bytes: int | None  # at max_batch_size (steady state)
    budget_bytes: int
    context_bytes: int
    first_failing_batch_size: int | None = None  # None: the search stopped at max_batch_size
    first_failing_reserved_bytes: int | None = None
    over_by_bytes: int | None = None  # reserved + context - budget at the first failing batch size
    probes: dict[int, int] = field(default_factory=dict)  # batch size -> predicted reserved bytes
    quant: str = ""  # the quantized base of the row's runs (membench.quant.Quant.label); "": none
    searched: str = "profiles"  # "replays" (every probe replayed, the answer checked by profiles) or "profiles"
    note: str = ""  # why the probes were profiles (--exact, or what did not align)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["probes"] = {str(k): v for k, v in sorted(self.probes.items())}
        return d


def budget(gpu: str, headroom: float, context: str | int | None = None) -> tuple[int, int]:
    """(bytes a step may use including the context, context bytes) on `gpu`; `context`: --context (a size),
    else the GPU table's typical figure."""
    from .backends import parse_context
    from .gpu import specs

    spec = specs.get(gpu)
    if not 0.0 <= headroom < 1.0:
        raise UserError(f"--headroom {headroom:g}: expected a fraction in [0, 1), e.g. 0.05")
    given = parse_context(context)
    return int(spec.memory_bytes * (1.0 - headroom)), spec.context_bytes if given is None else given


def search_batch(cost: Callable[[int], int], limit: int, max_batch_size: int) -> tuple[int, int | None]:
    """The largest b in 1..max_batch_size with cost(b) <= limit, and the first b that does not fit
    (None if every b up to max_batch_size fits). Assumes cost grows with b.

    Memory is nearly affine in b, so probes aim where the line through the known costs
    meets the limit: out from b = 1 and 8 until a batch size fails, then within the bracket
    [largest fit, smallest failure] the secant's estimate and its neighbour on the other
    side of the limit (with an exact line these two end the search). Where the line bends
    (the optimizer's peak dominates small batches, activations large ones), the secant of
    the narrowed bracket is aimed again while each probe at least halves it; where segment
    rounding makes the cost a staircase, bisection finishes: at most log2 of the bracket more."""
    seen: dict[int, int] = {}
    lo, hi = 0, None

    def probe(b: int) -> bool:
        """Cost b (once) and narrow the bracket; True when the search is over."""
        nonlocal lo, hi
        if lo < b and (hi is None or b < hi):
            if b not in seen:
                seen[b] = cost(b)
            if seen[b] <= limit:
                lo = b
            else:
                hi = b
        return (hi is not None and hi - lo <= 1) or (hi is None and lo >= max_batch_size)

    if probe(1) or probe(min(8, max_batch_size)):
        return lo, hi
    wide = True  # extrapolate with the slope from b = 1; after a miss, with the local one too
    while hi is None:
        slope = (seen[lo] - seen[1]) / (lo - 1)
        if not wide and lo - 1 in seen:  # the estimate fell short: the line bends up, use the larger slope
            slope = max(slope, seen[lo] - seen[lo - 1])
        step = int((limit - seen[lo]) / slope) if slope > 0 else lo  # no growth seen: double
        est = min(max(lo + step, lo + 1), max_batch_size)
        if probe(est):
            return lo, hi
        if hi is None and probe(est + 1):  # the estimate fit: its neighbour may end the search
            return lo, hi
        if hi is None and not wide and probe(min(2 * lo, max_batch_size)):  # short twice: double
            return lo, hi
        wide = False
    rise = seen[hi] - seen[lo]
    est = lo + int((limit - seen[lo]) * (hi - lo) / rise) if rise > 0 else (lo + hi) // 2
    est = min(max(est, lo + 1), hi - 1)
    if probe(est) or probe(est + 1 if lo == est else est - 1):
        return lo, hi
    while True:  # aim again through the bracket's ends while that at least halves it (a bent line)
        width, rise = hi - lo, seen[hi] - seen[lo]
        est = lo + int((limit - seen[lo]) * width / rise) if rise > 0 else (lo + hi) // 2
        if probe(min(max(est, lo + 1), hi - 1)):
            return lo, hi
        if hi - lo > width // 2:
            break
    while not probe((lo + hi) // 2):  # the line misled (rounding steps): plain bisection from here
        pass
    return lo, hi


@dataclass(frozen=True)
class Search:
    """How far and how a fit searches: up to `max_batch_size`; `jobs` profiles at once, each in a worker process,
    while every row's search goes on (default: one per CPU core, at most one per row; 1 searches row by row here,
    in this process); `exact`: every probe a profile (no replays)."""

    max_batch_size: int = 4096
    jobs: int | None = None
    exact: bool = False


@dataclass(frozen=True)
class FitTask:
    """What every probe of a fit shares: the run description (fake, CUDA target on the GPU), the budget."""

    spec: RunSpec  # the run every probe shares: device fake, target cuda on the GPU
    limit: int  # bytes a step may use, the context included
    context: int  # the CUDA context's bytes
    max_batch_size: int
    exact: bool = False  # every probe a profile of the whole model (no replays, no depth extrapolation)

    def probe(self, method: str, seq: int, batch_size: int, quant: str | None = None) -> RunSpec:
        return with_quant(self.spec, quant).replace(method=method, seq_len=seq, batch_size=batch_size)


def with_quant(spec: RunSpec, quant: str | None) -> RunSpec:
    """`spec` on the quantized base `quant` (nf4, fp4, int8; its options as `spec` gives them), or on the plain
    base (None: every quant option unset): a row of `fit --quants`."""
    from . import quant as quants

    return spec.replace(quant=quant) if quant is not None else quants.plain(spec)


def _row_label(method: str, quant_label: str) -> str:
    """How progress names a row: 'lora', or 'lora (nf4+dq)' on a quantized base."""
    return f"{method} ({quant_label})" if quant_label else method


@dataclass(frozen=True)
class Watch:
    """What a caller sees of a fit while it runs: `progress(text)`, what is running now (a live line);
    `probed(method, seq, batch, peak, fits)`, each probe as it ends, one call at a time (peak: predicted reserved
    + context)."""

    progress: Callable[[str], None] | None = None
    probed: Probed | None = None


def fit(spec: RunSpec, methods: list[str], *, seq_lens: list[int | None], headroom: float = 0.05,
        search: Search | None = None, watch: Watch | None = None,
        quants: list[str | None] | None = None) -> list[FitRow]:
    """One FitRow per (method, sequence length, quantized base): the largest batch size predicted to fit on
    `spec.gpu`. `quants`: the bases to compare (None: the plain one); default: `spec`'s own.

    `spec`: the run description every probe shares (its model, GPU (default a100-80gb), dtype, attention,
    optimizer, allocator options, overrides and `context`, the CUDA context on top of max reserved:
    default the GPU table's typical figure); its method and batch size are the search's. It is checked
    once, here, not at every probe. `seq_lens`: [None] is the model's default (an image model: its patches + 1).
    `search`: how far and how (Search: the largest batch size, worker processes, replays or not).
    `watch`: what is running and each probe as it ends (Watch)."""
    from . import backbones
    from . import methods as registry
    from .gpu import specs

    watch, search = watch or Watch(), search or Search()
    say, probed = watch.progress or (lambda _msg: None), watch.probed
    max_batch_size, jobs = search.max_batch_size, search.jobs
    gpu = specs.get(spec.gpu or specs.DEFAULT_GPU).name
    limit, context = budget(gpu, headroom, spec.context)
    if not methods:
        raise UserError("--methods: give at least one method, e.g. full,lora,meft3")
    for m in methods:
        registry.resolve(m)
    # a repeat is refused, not merged: it would search the same row twice, and is most likely a typo for another
    _refuse_repeats("--methods", methods)
    _refuse_repeats("--seq-lens", [s for s in seq_lens or [] if s is not None])
    if not seq_lens or any(s is not None and (isinstance(s, bool) or not isinstance(s, int) or s <= 0)
                           for s in seq_lens):
        raise UserError(f"--seq-lens {seq_lens}: expected positive integers")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size <= 0:
        raise UserError(f"--max-batch-size {max_batch_size!r}: expected a positive integer")
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs {jobs}: expected a positive integer")
    explicit = quants is not None  # --quants: a row per base; else the spec's own base (--quant)
    quants = list(quants) if explicit else [spec.quant]
    if not quants:
        raise UserError("--quants: give at least one base, e.g. none,nf4")
    _refuse_repeats("--quants", ["none" if q is None else q for q in quants])
    spec = spec.replace(device="fake", target="cuda", gpu=gpu, method=methods[0])
    labels = {}
    for q in quants:  # each base's runs checked once (a quantized one with the spec's quant options)
        checked = (with_quant(spec, q) if explicit else spec).validate()
        labels[q] = checked.quantized.label if q is not None else ""
    # the probes' shared spec: as validated (dtype and precision spelled as results spell them); with --quants
    # each row sets its own base (FitTask.probe), keeping the spec's quant options for the quantized ones
    spec = spec.replace(dtype=checked.dtype, precision=checked.precision) if explicit else checked
    from .runner import model_config, sequence_length

    config = model_config(spec)
    seq_lens = [sequence_length(config, s, name=spec.model) for s in seq_lens]  # defaults; image models: patches + 1
    positions = backbones.family_for(config.model_type).max_positions(config)
    too_long = [s for s in seq_lens if s > positions]
    if too_long:
        raise UserError(f"sequence length {too_long[0]} is longer than {spec.model}'s {positions} positions")

    task = FitTask(spec, limit, context, max_batch_size, search.exact)
    keys = [(method, seq, q, labels[q]) for q in quants for method in methods for seq in seq_lens]
    jobs = min(jobs or os.cpu_count() or 1, len(keys))
    if jobs == 1:
        return [_row(key, task, say, probed) for key in keys]
    return _in_workers(keys, task, jobs, say, probed)


def _refuse_repeats(flag: str, values: list) -> None:
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise UserError(f"{flag} lists {repeated[0]} more than once; each value is one row of the table")


def _reserved(method: str, seq: int, b: int, task: FitTask, quant: str | None = None) -> int:
    """One probe: the predicted steady-state max_memory_reserved of a fake-tensor profile, CUDA target."""
    from .runner import InputsTooLarge, run

    try:
        r = run(task.probe(method, seq, b, quant), exact=task.exact)  # the task's spec was checked once, in fit()
    except InputsTooLarge as exc:  # the inputs alone exceed the GPU's memory: b does not fit (a lower bound)
        return exc.needed_bytes
    return r.predicted_cuda.max_reserved_bytes


def _row(key: tuple, task: FitTask, say: Callable[[str], None], probed: Probed | None = None) -> FitRow:
    """One row, here: over replays where they apply, else over profiles (the row's note says why)."""
    row, note = _replays_or_why(key, task, say, probed)
    if row is None:
        row = _search_row(key, task, say, probed=probed)
        row.note = note
    return row


def _replays_or_why(key: tuple, task: FitTask, say: Callable[[str], None] | None = None,
                    probed: Probed | None = None) -> tuple[FitRow | None, str]:
    """The row's search over replays (membench.runner.extrapolated.replays), its answer checked by profiles; or
    None and why not (`--exact`, or what does not align)."""
    from .depth.trace import NotAligned
    from .runner import extrapolated

    if task.exact:
        return None, "--exact: every probe a profile of the whole model"
    say = say or (lambda _msg: None)
    method, seq, quant, label = key
    name = _row_label(method, label)
    spec = task.probe(method, seq, extrapolated.BATCHES[0], quant)
    try:
        depth, _specs = extrapolated.plan(spec)
        if depth < extrapolated.REPLAYS_FROM:
            return None, (f"{depth} layers: its profiles are as quick as the shallow ones replays need "
                          f"(from {extrapolated.REPLAYS_FROM} layers)")
        say(f"{name} s{seq}: shallow profiles")
        replays = extrapolated.replays(spec, progress=lambda msg: say(f"{name} s{seq}: {msg}"))
        low = extrapolated.BATCHES[0]  # below it a batch can run other ops (batch size 1: a view, not a copy)

        def reserved(b: int) -> int:
            return replays.reserved(b) if b >= low else _reserved(method, seq, b, task, quant)

        row = _search_row(key, task, say, reserved=reserved, probed=probed)
        for b in (row.max_batch_size, row.first_failing_batch_size):  # the answer, checked
            if b and b >= low:
                say(f"{name} s{seq}: checking batch size {b} with a profile")
                replays.check(b)
    except NotAligned as exc:
        return None, f"replays do not apply ({exc}): every probe a profile"
    row.searched = "replays"
    return row, ""


def _search_row(key: tuple, task: FitTask, say: Callable[[str], None],
                reserved: Callable[[int], int] | None = None, probed: Probed | None = None) -> FitRow:
    """The search for one (method, sequence length, quantized base, its label). `reserved(b)`: the probe
    (default: here)."""
    method, seq, quant, label = key
    probes: dict[int, int] = {}
    limit, context = task.limit, task.context
    reserved = reserved or (lambda b: _reserved(method, seq, b, task, quant))
    name = _row_label(method, label)

    def cost(b: int) -> int:
        say(f"{name} s{seq}: batch {b}")
        probes[b] = reserved(b)
        _tell_probe(probed, task, name, seq, b, probes[b])
        return probes[b] + context

    best, fail = search_batch(cost, limit, task.max_batch_size)
    spec = task.spec
    return FitRow(model=spec.model, method=method, seq_len=seq, gpu=spec.gpu, dtype=spec.dtype,
                  max_batch_size=best, predicted_max_reserved_bytes=probes.get(best), budget_bytes=limit,
                  context_bytes=context, first_failing_batch_size=fail,
                  first_failing_reserved_bytes=probes.get(fail) if fail else None,
                  over_by_bytes=probes[fail] + context - limit if fail else None, probes=probes, quant=label)


def _tell_probe(probed: Probed | None, task: FitTask, name: str, seq: int, b: int, reserved: int) -> None:
    """A probe's end, as `Watch.probed` hears it: its peak (reserved + context) and whether it fits."""
    if probed is not None:
        probed(name, seq, b, reserved + task.context, reserved + task.context <= task.limit)


def _in_workers(keys: list[tuple], task: FitTask, jobs: int, say: Callable[[str], None],
                probed: Probed | None = None) -> list[FitRow]:
    """Every row's search at once, each in a thread here; their probes run in `jobs` processes forked from
    a server that imported torch once (no CUDA). Probes, not rows, share the processes, so no core
    idles while another row still has work."""
    import multiprocessing
    import threading
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait

    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["membench.sweep.preload"])
    lock = threading.Lock()
    latest: dict[str, str] = {}

    def tell(msg: str) -> None:
        with lock:
            latest[msg.split(":")[0]] = msg

    def one_at_a_time(*probe) -> None:
        with lock:
            probed(*probe)

    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool, ThreadPoolExecutor(len(keys)) as rows:
        def search(key: tuple) -> FitRow:
            method, seq, quant, label = key
            tell(f"{_row_label(method, label)} s{seq}: shallow profiles and replays")
            row, note = pool.submit(_replays_or_why, key, task).result()
            for b, reserved in (row.probes.items() if row is not None else ()):  # (replayed in the worker)
                _tell_probe(one_at_a_time if probed is not None else None, task, _row_label(method, label), seq, b,
                            reserved)
            if row is None:
                row = _search_row(key, task, tell,
                                  reserved=lambda b: pool.submit(_reserved, method, seq, b, task, quant).result(),
                                  probed=one_at_a_time if probed is not None else None)
                row.note = note
            with lock:
                latest.pop(f"{_row_label(method, label)} s{seq}", None)
            return row

        futures = {rows.submit(search, key): key for key in keys}
        pending = set(futures)
        try:
            while pending:
                _done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                with lock:
                    shown = "; ".join(latest.values())
                say(f"{len(futures) - len(pending)}/{len(futures)} rows done; " + shown)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        return [f.result() for f in futures]
