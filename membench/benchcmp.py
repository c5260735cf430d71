"""Compare two pytest-benchmark JSON files: memory figures exactly, step time within a limit.

pytest-benchmark can only fail a comparison on timing statistics, and it never
compares `extra_info`. The membench suites (`benchmarks/bench_methods.py`) store
their memory figures there, so this module is the gate:

    report = compare(load("baseline.json"), load("current.json"),
                     max_memory=parse_limit("0%"), max_time=parse_limit("10%"))
    report.exit_code      # 0 pass, 1 regression

Rules (docs/benchmarks.md):
- Benchmarks are matched by `fullname` (pytest node id), or `name` when absent.
- Memory metrics are the integer `*_bytes` entries of `extra_info` and the
  entries of its `*_bytes` dicts (per-layer bytes; a row absent on one side
  counts as 0 B). Any increase beyond `max_memory` (default 0%: one byte fails)
  is a regression. A metric the baseline has and the current run lacks is a
  regression too (the figure can no longer be checked).
- Step time (`stats[<stat>]`, `min` by default) fails beyond `max_time`, but only
  when both files come from the same machine (same host, CPU, device and thread
  count) and neither was timed once (`--bench-quick`); otherwise time deltas are
  shown and not gated.
- A benchmark in the baseline but not in the current run is reported and fails
  unless `allow_missing`; a new benchmark is reported and passes.
- Different torch/transformers/peft versions are reported prominently: memory
  figures are exact only for the same versions.

Imports no torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .units import parse_bytes

# versions that memory figures depend on, and machine facts that step time depends on
VERSION_KEYS = ("torch", "transformers", "peft")
MACHINE_KEYS = ("node", "machine", "cpu", "device_name", "torch_num_threads")
TIME_STATS = ("min", "median", "mean", "max")
HEADLINE = ("activation_bytes", "peak_activation_bytes")

OK, IMPROVED, REGRESSED, NEW, MISSING = "ok", "improved", "regressed", "new", "missing"


# ----------------------------------------------------------------------------- limits

@dataclass(frozen=True)
class Limit:
    """How much worse a figure may get: a percentage of the baseline, a number of bytes, or unlimited."""

    kind: str  # "pct" | "bytes" | "off"
    value: float = 0.0
    text: str = ""

    def exceeded(self, base: float, current: float) -> bool:
        if self.kind == "off" or current <= base:
            return False
        if self.kind == "bytes":
            return current - base > self.value
        if base <= 0:
            return True  # something from nothing: an infinite increase
        return (current - base) / base * 100.0 > self.value + 1e-9

    def __str__(self) -> str:
        return self.text or (self.kind if self.kind == "off" else f"{self.value:g}%")


def parse_limit(text: str, *, what: str = "limit", allow_bytes: bool = True) -> Limit:
    """'0%', '2.5%', 'off' (also 'none'), and for memory '512', '512B', '4KiB', '1MB'."""
    raw = str(text).strip()
    low = raw.lower().replace(" ", "")
    if low in ("off", "none", "inf", "unlimited"):
        return Limit("off", math.inf, "off")
    m = re.fullmatch(r"\+?(\d+(?:\.\d+)?)%", low)
    if m:
        return Limit("pct", float(m.group(1)), f"{float(m.group(1)):g}%")
    size = parse_bytes(low.removeprefix("+")) if allow_bytes else None
    if size is not None:
        return Limit("bytes", float(size), raw)
    allowed = "a percentage such as 0% or 2.5%, a size such as 512B or 4KiB, or off" if allow_bytes \
        else "a percentage such as 10%, or off"
    raise UserError(f"{what} {text!r}: expected {allowed}")


# ----------------------------------------------------------------------------- input

@dataclass
class Bench:
    key: str
    name: str
    group: str | None
    extra: dict[str, Any]
    stats: dict[str, Any]

    def memory(self) -> dict[str, int]:
        return memory_metrics(self.extra)


@dataclass
class BenchFile:
    path: str
    benches: dict[str, Bench]
    machine_info: dict[str, Any]
    commit_info: dict[str, Any]
    datetime: str | None
    quick: bool = False  # step times taken once (benchmarks --bench-quick): too rough to gate


def memory_metrics(extra: dict[str, Any]) -> dict[str, int]:
    """Flatten `extra_info` to {metric: bytes}: `activation_bytes`, ..., `layer_bytes[layers.0]`, ..."""
    out: dict[str, int] = {}
    for key, value in extra.items():
        if not key.endswith("_bytes"):
            continue
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            out[key] = value
        elif isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, int) and not isinstance(v, bool):
                    out[f"{key}[{sub}]"] = v
    return out


def _is_dict_metric(metric: str) -> bool:
    return metric.endswith("]") and "[" in metric


def load(path: str | Path) -> BenchFile:
    """Read a pytest-benchmark JSON file (`--benchmark-json`); UserError when it is not one."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise UserError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a folder, expected a pytest-benchmark JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read it ({exc.__class__.__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise UserError(f"{p}: not a pytest-benchmark JSON file (no 'benchmarks' list; "
                        "write one with pytest --benchmark-json FILE)")
    benches: dict[str, Bench] = {}
    for i, entry in enumerate(data["benchmarks"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name") or entry.get("fullname"), str):
            raise UserError(f"{p}: benchmark #{i} has no name")
        key = entry.get("fullname") or entry["name"]
        if key in benches:
            raise UserError(f"{p}: benchmark {key!r} appears twice")
        extra = entry.get("extra_info") or {}
        stats = entry.get("stats") or {}
        if not isinstance(extra, dict) or not isinstance(stats, dict):
            raise UserError(f"{p}: benchmark {key!r} has malformed extra_info or stats")
        benches[key] = Bench(key=key, name=entry.get("name") or key, group=entry.get("group"),
                             extra=extra, stats=stats)
    machine = data.get("machine_info") if isinstance(data.get("machine_info"), dict) else {}
    commit = data.get("commit_info") if isinstance(data.get("commit_info"), dict) else {}
    suite = data.get("membench_suite") if isinstance(data.get("membench_suite"), dict) else {}
    return BenchFile(path=str(p), benches=benches, machine_info=machine, commit_info=commit,
                     datetime=data.get("datetime"), quick=bool(suite.get("quick")))


# ----------------------------------------------------------------------------- comparison

@dataclass
class MetricDelta:
    metric: str
    base: int | None
    current: int | None
    regressed: bool

    @property
    def delta(self) -> int | None:
        if self.base is None or self.current is None:
            return None
        return self.current - self.base

    @property
    def pct(self) -> float | None:
        d = self.delta
        if d is None:
            return None
        if self.base == 0:
            return 0.0 if d == 0 else math.inf
        return 100.0 * d / self.base


@dataclass
class Row:
    key: str
    name: str
    status: str
    memory: list[MetricDelta] = field(default_factory=list)  # every metric, changed or not
    time_base: float | None = None
    time_current: float | None = None
    time_regressed: bool = False

    @property
    def time_pct(self) -> float | None:
        if self.time_base is None or self.time_current is None or self.time_base <= 0:
            return None
        return 100.0 * (self.time_current - self.time_base) / self.time_base

    def metric(self, name: str) -> MetricDelta | None:
        return next((m for m in self.memory if m.metric == name), None)

    @property
    def changed(self) -> list[MetricDelta]:
        return [m for m in self.memory if m.delta != 0]

    @property
    def memory_regressions(self) -> list[MetricDelta]:
        return [m for m in self.memory if m.regressed]


@dataclass
class Report:
    baseline: str
    current: str
    rows: list[Row]
    max_memory: str
    max_time: str
    time_stat: str
    time_gated: bool
    allow_missing: bool
    version_diffs: dict[str, tuple[Any, Any]]
    machine_diffs: dict[str, tuple[Any, Any]]
    notes: list[str]

    def by_status(self, status: str) -> list[Row]:
        return [r for r in self.rows if r.status == status]

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.status == REGRESSED or (r.status == MISSING and not self.allow_missing)]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def summary(self) -> str:
        counts = {s: len(self.by_status(s)) for s in (REGRESSED, IMPROVED, OK, NEW, MISSING)}
        parts = [f"{counts[REGRESSED]} regressed", f"{counts[IMPROVED]} improved", f"{counts[OK]} unchanged",
                 f"{counts[NEW]} new (not in baseline)", f"{counts[MISSING]} missing"]
        verdict = "FAIL" if self.exit_code else "PASS"
        return f"{verdict}: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        d["summary"] = self.summary()
        return d


def _machine_fingerprint(info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key in MACHINE_KEYS:
        value = info.get(key)
        if key == "cpu" and isinstance(value, dict):
            value = value.get("brand_raw") or value.get("brand")
        out[key] = value
    return out


def _diffs(a: dict[str, Any], b: dict[str, Any], keys) -> dict[str, tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def compare(baseline: BenchFile, current: BenchFile, *, max_memory: Limit | None = None,
            max_time: Limit | None = None, time_stat: str = "min", allow_missing: bool = False,
            time_across_machines: bool = False) -> Report:
    max_memory = max_memory or Limit("pct", 0.0, "0%")
    max_time = max_time or Limit("pct", 10.0, "10%")
    if time_stat not in TIME_STATS:
        raise UserError(f"time statistic {time_stat!r}: expected one of {', '.join(TIME_STATS)}")

    notes: list[str] = []
    version_diffs = _diffs({k: baseline.machine_info.get(k) for k in VERSION_KEYS},
                           {k: current.machine_info.get(k) for k in VERSION_KEYS}, VERSION_KEYS)
    if not any(baseline.machine_info.get(k) for k in VERSION_KEYS):
        notes.append("the baseline records no torch/transformers versions (was it written by the membench "
                     "suites in benchmarks/?)")
    base_fp, cur_fp = _machine_fingerprint(baseline.machine_info), _machine_fingerprint(current.machine_info)
    machine_diffs = _diffs(base_fp, cur_fp, MACHINE_KEYS)
    quick = [f.path for f in (baseline, current) if f.quick]
    time_gated = max_time.kind != "off" and (not machine_diffs or time_across_machines) and not quick
    if max_time.kind != "off" and quick:
        notes.append(f"step time is not gated: {' and '.join(quick)} timed each benchmark once (--bench-quick)")
    elif max_time.kind != "off" and machine_diffs and not time_across_machines:
        notes.append("step time is not gated: the two files come from different machines ("
                     + "; ".join(f"{k}: {a!r} vs {b!r}" for k, a, b in
                                 ((k, *machine_diffs[k]) for k in machine_diffs))
                     + "). Keep a time baseline per machine (docs/benchmarks.md).")

    rows: list[Row] = []
    for key, cur in current.benches.items():
        base = baseline.benches.get(key)
        if base is None:
            rows.append(Row(key=key, name=cur.name, status=NEW,
                            memory=[MetricDelta(m, None, v, False) for m, v in sorted(cur.memory().items())],
                            time_current=_stat(cur, time_stat)))
            continue
        rows.append(_compare_one(base, cur, max_memory, max_time if time_gated else None, time_stat))
    for key, base in baseline.benches.items():
        if key not in current.benches:
            rows.append(Row(key=key, name=base.name, status=MISSING,
                            memory=[MetricDelta(m, v, None, False) for m, v in sorted(base.memory().items())],
                            time_base=_stat(base, time_stat)))
    order = {key: i for i, key in enumerate(baseline.benches)}
    rows.sort(key=lambda r: (order.get(r.key, len(order)), r.key))
    return Report(baseline=baseline.path, current=current.path, rows=rows, max_memory=str(max_memory),
                  max_time=str(max_time), time_stat=time_stat, time_gated=time_gated, allow_missing=allow_missing,
                  version_diffs=version_diffs, machine_diffs=machine_diffs, notes=notes)


def _stat(bench: Bench, stat: str) -> float | None:
    value = bench.stats.get(stat)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _compare_one(base: Bench, cur: Bench, max_memory: Limit, max_time: Limit | None, time_stat: str) -> Row:
    bm, cm = base.memory(), cur.memory()
    deltas: list[MetricDelta] = []
    for metric in list(bm) + [m for m in cm if m not in bm]:
        b, c = bm.get(metric), cm.get(metric)
        if _is_dict_metric(metric):
            # a per-layer row that exists on one side only counts as 0 B on the other
            b = 0 if b is None else b
            c = 0 if c is None else c
            deltas.append(MetricDelta(metric, b, c, max_memory.exceeded(b, c)))
        elif c is None:
            deltas.append(MetricDelta(metric, b, None, True))  # the figure disappeared: cannot be checked
        elif b is None:
            deltas.append(MetricDelta(metric, None, c, False))  # a new kind of figure: reported, not gated
        else:
            deltas.append(MetricDelta(metric, b, c, max_memory.exceeded(b, c)))
    tb, tc = _stat(base, time_stat), _stat(cur, time_stat)
    time_regressed = bool(max_time is not None and tb is not None and tc is not None and max_time.exceeded(tb, tc))
    mem_reg = any(d.regressed for d in deltas)
    if mem_reg or time_regressed:
        status = REGRESSED
    elif any((d.delta or 0) < 0 for d in deltas):
        status = IMPROVED
    else:
        status = OK
    return Row(key=base.key, name=cur.name, status=status, memory=deltas, time_base=tb, time_current=tc,
               time_regressed=time_regressed)
