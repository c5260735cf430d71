"""The memory gate: `membench bench-compare` on hand-made pytest-benchmark JSON, and end to end."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from membench.benchcmp import Limit, compare, load, memory_metrics, parse_limit
from membench.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MACHINE = {"node": "ci", "machine": "x86_64", "cpu": {"brand_raw": "Some CPU"}, "device_name": "Some CPU",
           "torch_num_threads": 2, "torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": "0.21.2"}



@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """The comparison's lines are checked for their text: a $COLUMNS of 80 (an xdist worker's) must not wrap them
    (bench-compare's log console is 200 wide unless $COLUMNS says otherwise)."""
    monkeypatch.delenv("COLUMNS", raising=False)

def extra(act=1000, peak=3000, layers=(400, 600)) -> dict:
    return {"method": "lora", "device": "fake", "activation_bytes": act, "peak_activation_bytes": peak,
            "grad_bytes": 64, "layer_bytes": {f"layers.{i}": b for i, b in enumerate(layers)},
            "num_params": 10}


def entry(name: str, ext: dict | None = None, t: float = 0.010) -> dict:
    return {"name": name, "fullname": f"benchmarks/bench_methods.py::{name}", "group": "tiny fake",
            "params": None, "extra_info": ext if ext is not None else extra(),
            "stats": {"min": t, "median": t * 1.1, "mean": t * 1.2, "max": t * 2, "rounds": 5}}


def write(path: Path, benches: list[dict], machine: dict | None = None, quick: bool = False) -> Path:
    data = {"machine_info": copy.deepcopy(MACHINE if machine is None else machine), "commit_info": {},
            "benchmarks": benches, "datetime": "2026-01-01T00:00:00", "version": "5.3.1",
            "membench_suite": {"quick": quick}}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def base(tmp_path) -> Path:
    return write(tmp_path / "base.json", [entry("test_method[a]"), entry("test_method[b]")])


# --------------------------------------------------------------------------- hand-made JSON

def test_identical_files_pass(cli, base):
    code, out, _ = cli("bench-compare", str(base), str(base))
    assert code == 0, out
    assert "PASS" in out and "2 unchanged" in out


def test_improvement_passes(cli, tmp_path, base):
    cur = write(tmp_path / "cur.json", [entry("test_method[a]", extra(act=900, peak=2500, layers=(300, 600))),
                                        entry("test_method[b]")])
    code, out, _ = cli("bench-compare", str(base), str(cur))
    assert code == 0, out
    assert "1 improved" in out and "improved" in out


def test_one_byte_memory_regression_fails(cli, tmp_path, base):
    cur = write(tmp_path / "cur.json", [entry("test_method[a]", extra(peak=3001)), entry("test_method[b]")])
    code, out, _ = cli("bench-compare", str(base), str(cur))
    assert code == 1, out
    assert "REGRESSED" in out
    assert "test_method[a]: peak_activation_bytes 3,000 -> 3,001 B" in out
    assert "test_method[b]" in out and "1 regressed" in out


def test_one_byte_moved_between_layers_fails_even_with_equal_totals(cli, tmp_path, base):
    cur = write(tmp_path / "cur.json", [entry("test_method[a]", extra(layers=(399, 601))), entry("test_method[b]")])
    code, out, _ = cli("bench-compare", str(base), str(cur))
    assert code == 1, out
    assert "layer_bytes[layers.1] 600 -> 601 B" in out
    assert "layer_bytes[layers.0]" not in out.split("regressions:")[1]  # the layer that shrank is fine


def test_new_layer_row_counts_from_zero(tmp_path, base):
    ext = extra()
    ext["layer_bytes"]["head"] = 8
    report = compare(load(base), load(write(tmp_path / "c.json", [entry("test_method[a]", ext),
                                                                  entry("test_method[b]")])))
    row = next(r for r in report.rows if r.name == "test_method[a]")
    assert [(m.metric, m.base, m.current) for m in row.memory_regressions] == [("layer_bytes[head]", 0, 8)]
    assert report.exit_code == 1


def test_memory_limit_in_percent_and_bytes(cli, tmp_path, base):
    cur = write(tmp_path / "cur.json", [entry("test_method[a]", extra(act=1010)), entry("test_method[b]")])
    assert cli("bench-compare", str(base), str(cur), "--max-memory-regression", "2%")[0] == 0
    assert cli("bench-compare", str(base), str(cur), "--max-memory-regression", "0.5%")[0] == 1
    assert cli("bench-compare", str(base), str(cur), "--max-memory-regression", "10B")[0] == 0
    assert cli("bench-compare", str(base), str(cur), "--max-memory-regression", "9")[0] == 1
    assert cli("bench-compare", str(base), str(cur), "--max-memory-regression", "off")[0] == 0


def test_missing_benchmark_is_reported_and_fails_unless_allowed(cli, tmp_path, base):
    cur = write(tmp_path / "cur.json", [entry("test_method[a]")])
    code, out, _ = cli("bench-compare", str(base), str(cur))
    assert code == 1, out
    assert "missing from current" in out and "benchmarks/bench_methods.py::test_method[b]" in out
    code, out, _ = cli("bench-compare", str(base), str(cur), "--allow-missing")
    assert code == 0, out
    assert "benchmarks/bench_methods.py::test_method[b]" in out and "1 missing" in out


def test_new_benchmark_is_reported_and_passes(cli, tmp_path, base):
    cur = write(tmp_path / "cur.json", [entry("test_method[a]"), entry("test_method[b]"), entry("test_method[c]")])
    code, out, _ = cli("bench-compare", str(base), str(cur))
    assert code == 0, out
    assert "new, not in the baseline" in out and "test_method[c]" in out and "1 new" in out


def test_metric_that_disappears_fails(tmp_path, base):
    ext = extra()
    del ext["grad_bytes"]
    report = compare(load(base), load(write(tmp_path / "c.json", [entry("test_method[a]", ext),
                                                                  entry("test_method[b]")])))
    assert report.exit_code == 1
    row = next(r for r in report.rows if r.name == "test_method[a]")
    assert [m.metric for m in row.memory_regressions] == ["grad_bytes"]


def test_time_noise_within_limit_passes_and_beyond_fails(cli, tmp_path, base):
    noisy = write(tmp_path / "noisy.json", [entry("test_method[a]", t=0.0108), entry("test_method[b]", t=0.0093)])
    code, out, _ = cli("bench-compare", str(base), str(noisy))
    assert code == 0, out
    slow = write(tmp_path / "slow.json", [entry("test_method[a]", t=0.0125), entry("test_method[b]")])
    code, out, _ = cli("bench-compare", str(base), str(slow))
    assert code == 1, out
    assert "test_method[a]: step time min 10.000 -> 12.500 ms (+25.00%" in out
    assert cli("bench-compare", str(base), str(slow), "--max-time-regression", "30%")[0] == 0
    assert cli("bench-compare", str(base), str(slow), "--max-time-regression", "off")[0] == 0
    # median rose 25% too, mean as well; the statistic is selectable
    assert cli("bench-compare", str(base), str(slow), "--time-stat", "median")[0] == 1


def test_time_is_not_gated_across_machines(cli, tmp_path, base):
    other = dict(MACHINE, node="gpu-box", device_name="NVIDIA H100")
    slow = write(tmp_path / "slow.json", [entry("test_method[a]", t=0.05), entry("test_method[b]")], machine=other)
    code, out, _ = cli("bench-compare", str(base), str(slow))
    assert code == 0, out
    assert "step time is not gated" in out and "gpu-box" in out
    assert cli("bench-compare", str(base), str(slow), "--time-across-machines")[0] == 1


def test_time_taken_once_is_not_gated(cli, tmp_path, base):
    slow = write(tmp_path / "slow.json", [entry("test_method[a]", t=0.05), entry("test_method[b]")], quick=True)
    code, out, _ = cli("bench-compare", str(base), str(slow))
    assert code == 0, out
    assert "timed each benchmark once" in " ".join(out.split())


def test_memory_is_still_gated_across_machines(cli, tmp_path, base):
    other = dict(MACHINE, node="elsewhere")
    cur = write(tmp_path / "cur.json", [entry("test_method[a]", extra(act=1001)), entry("test_method[b]")],
                machine=other)
    assert cli("bench-compare", str(base), str(cur))[0] == 1


def test_version_difference_is_said_clearly(cli, tmp_path, base):
    newer = dict(MACHINE, torch="2.14.0", transformers="5.30.0")
    cur = write(tmp_path / "cur.json", [entry("test_method[a]"), entry("test_method[b]")], machine=newer)
    code, out, _ = cli("bench-compare", str(base), str(cur))
    assert code == 0, out
    flat = " ".join(out.split())
    assert "VERSIONS DIFFER" in flat
    assert "torch 2.13.0+cpu (baseline) vs 2.14.0 (current)" in flat
    assert "transformers 5.24.0 (baseline) vs 5.30.0 (current)" in flat


def test_out_writes_the_comparison_as_json(cli, tmp_path, base):
    cur = write(tmp_path / "cur.json", [entry("test_method[a]", extra(act=1001)), entry("test_method[b]")])
    code, _, _ = cli("bench-compare", str(base), str(cur), "--out", str(tmp_path / "cmp.json"))
    data = json.loads((tmp_path / "cmp.json").read_text())
    assert code == 1 and data["exit_code"] == 1
    statuses = {r["name"]: r["status"] for r in data["rows"]}
    assert statuses == {"test_method[a]": "regressed", "test_method[b]": "ok"}


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not valid JSON"),
    ('{"machine_info": {}}', "not a pytest-benchmark JSON file"),
    ('[1, 2]', "not a pytest-benchmark JSON file"),
    ('{"benchmarks": [{"stats": {}}]}', "has no name"),
])
def test_unreadable_input_exits_2(cli, tmp_path, base, content, message):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    code, out, err = cli("bench-compare", str(base), str(bad))
    assert code == 2
    assert message in err and "Traceback" not in err
    code, _, err = cli("bench-compare", str(bad), str(base))
    assert code == 2 and message in err


@pytest.mark.parametrize("option, value", [("--max-memory-regression", "lots"),
                                           ("--max-time-regression", "5ms"),
                                           ("--time-stat", "p99")])
def test_bad_options_exit_2(cli, base, option, value):
    code, _, err = cli("bench-compare", str(base), str(base), option, value)
    assert code == 2 and err.startswith("error:")


def test_parse_limit_and_metrics():
    assert parse_limit("0%") == Limit("pct", 0.0, "0%")
    assert parse_limit("4KiB").value == 4096 and parse_limit("1MB").value == 1_000_000
    assert parse_limit("off").kind == "off"
    with pytest.raises(UserError):
        parse_limit("10", allow_bytes=False)
    assert not Limit("pct", 0.0).exceeded(100, 100) and Limit("pct", 0.0).exceeded(100, 101)
    assert Limit("pct", 50.0).exceeded(0, 1)  # something from nothing is always a regression
    assert memory_metrics({"a_bytes": 1, "flag_bytes": True, "n": 5, "layer_bytes": {"x": 2, "y": "z"}}) \
        == {"a_bytes": 1, "layer_bytes[x]": 2}


# --------------------------------------------------------------------------- end to end

def _run_suite(tmp_path: Path, name: str, extra_save: bool) -> Path:
    """Run the real suite in a subprocess for `full` and the test-only `gate-probe` on a tiny OPT."""
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, MEMBENCH_PLUGINS="benchcmp_worse", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "tests" / "plugins"),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("MEMBENCH_TEST_EXTRA_SAVE", None)
    for key in [k for k in env if k.startswith("PYTEST_XDIST")]:  # a suite of its own, not an xdist worker's
        env.pop(key)
    if extra_save:
        env["MEMBENCH_TEST_EXTRA_SAVE"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "benchmarks" / "bench_methods.py"),
           "--bench-methods=full,gate-probe", "--bench-models=opt", "--bench-configs=tiny",
           "--bench-devices=fake,cpu", "--bench-quick", "--benchmark-json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_end_to_end_a_method_that_saves_one_more_tensor_fails_the_gate(cli, tmp_path):
    honest = _run_suite(tmp_path, "honest", extra_save=False)
    worse = _run_suite(tmp_path, "worse", extra_save=True)
    data = json.loads(honest.read_text())
    assert data["machine_info"]["torch"] and data["machine_info"]["transformers"]
    assert data["machine_info"]["device_name"]
    names = {b["name"] for b in data["benchmarks"]}
    assert names == {f"test_method[opt-tiny-{m}-{d}]" for m in ("full", "gate-probe") for d in ("fake", "cpu")}

    code, out, _ = cli("bench-compare", str(honest), str(worse), "--max-time-regression", "off",
                       "--out", str(tmp_path / "cmp.json"))
    assert code == 1, out
    rows = {r["name"]: r for r in json.loads((tmp_path / "cmp.json").read_text())["rows"]}
    # negative control: `full` ran in two processes and did not move by a byte, on fake and on cpu
    assert rows["test_method[opt-tiny-full-fake]"]["status"] == "ok"
    assert rows["test_method[opt-tiny-full-cpu]"]["status"] == "ok"
    for device in ("fake", "cpu"):
        row = rows[f"test_method[opt-tiny-gate-probe-{device}]"]
        assert row["status"] == "regressed"
        regressed = {m["metric"]: m["current"] - m["base"] for m in row["memory"] if m["regressed"]}
        # one extra fp32 tensor the size of the first Linear's output: batch 2 x seq 16 x 32 wide (q_proj)
        assert regressed["activation_bytes"] == 2 * 16 * 32 * 4
        assert regressed["layer_bytes[layers.0]"] == 2 * 16 * 32 * 4
        assert "layer_bytes[layers.1]" not in regressed
    assert "opt-tiny-gate-probe-fake" in out and "REGRESSED" in out
