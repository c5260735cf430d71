"""What a newcomer reads at 80 columns through a pipe: words whole, timestamps on one line, one progress line
per finished probe or run, one `needs` answer per run, `--version` and shell completion."""

from __future__ import annotations

import json
import re

import pytest

from membench.backbones.tiny import tiny_overrides
from membench.result import RunRecord, RunResult

GiB = 2**30


@pytest.fixture
def narrow(monkeypatch):
    """stdout and stderr as a pipe at COLUMNS=80 (capsys is not a terminal; rich reads COLUMNS)."""
    from membench.cli import format as fmt

    monkeypatch.setenv("COLUMNS", "80")
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    for console in (fmt.console, fmt.err_console):
        monkeypatch.setattr(console, "_width", None)  # no width fixed at import: COLUMNS decides


def split_words(text: str, out: str) -> list[str]:
    """The words of `text` that `out` does not show whole (box-drawing characters count as spaces)."""
    shown = set(re.sub("[\u2500-\u257f]", " ", out).split())
    return [word for word in text.split() if word not in shown]


def widest(out: str) -> int:
    return max(len(line) for line in out.splitlines())


def tiny_args(family: str, **kw) -> list[str]:
    return [a for k, v in tiny_overrides(family, **kw).items() for a in ("--override", f"{k}={v}")]


# --- the mechanism: membench.cli.format.Table ---

def _render(table) -> str:
    from rich.console import Console

    console = Console(width=80, file=None, force_terminal=False, color_system=None)
    with console.capture() as cap:
        console.print(table)
    return cap.get()


def test_table_gives_every_column_its_longest_word():
    from membench.cli.format import Table

    t = Table("options", [("name", "left"), ("what it does", "left"), ("options", "left")], keys=("name",))
    options = "r=8, target_modules=key,value,output.dense, autocast_adapter_dtype=True, feedforward_modules=x"
    t.add_row("ia3", "learned rescaling of keys, values and FFN activations, base frozen", options)
    out = _render(t)
    assert widest(out) <= 80 and "…" not in out
    assert split_words(options + " learned rescaling", out) == []


def test_table_too_wide_splits_and_repeats_the_keys():
    from membench.cli.format import Table

    headers = [f"column number {i}" for i in range(8)]
    t = Table(None, [("model", "left")] + [(h, "right") for h in headers], keys=("model",), whole=headers)
    t.add_row("opt-1.3b", *(f"{i}.25 MiB" for i in range(8)))
    t.add_row("llama-2-7b", *(f"{i}.50 GiB" for i in range(8)))
    out = _render(t)
    assert widest(out) <= 80
    assert out.count("llama-2-7b") >= 2 and out.count("opt-1.3b") >= 2  # each part names its rows
    assert split_words(" ".join(headers), out) == []
    for i in range(8):  # whole cells: number and unit on one line
        assert re.search(rf"{i}\.25 MiB", out) and re.search(rf"{i}\.50 GiB", out)


def test_table_says_a_constant_column_once_in_the_title():
    from membench.cli.format import Table

    t = Table("runs", [("model", "left"), ("seq", "right"), ("batch", "right")], constant=("seq", "batch"))
    t.add_row("gpt2", "512", "1")
    t.add_row("opt-125m", "512", "2")
    out = _render(t)
    assert "runs · seq 512" in out and "┃ batch" in out  # batch differs between rows: still a column
    assert out.count("512") == 1


# --- the commands at 80 columns through a pipe ---

def test_list_verbose_never_breaks_an_option_mid_word(cli, narrow):
    from membench import backbones, methods
    from membench.cli.listing import _resolved_defaults

    code, out, err = cli("list", "--verbose")
    assert code == 0, err
    assert widest(out) <= 80
    family = backbones.get("bert-base").family
    names = methods.names(include_modifiers=True)
    options = " ".join(_resolved_defaults(methods.get(n), family) for n in names)
    assert "autocast_adapter_dtype=True" in options  # the example is among them
    assert split_words(options, out) == []
    assert split_words(" ".join(methods.get(n).summary for n in names), out) == []


def _store_sweep(db, created_at: str) -> list[str]:
    """Runs as a sweep stores them: long model and method names, three batch sizes, an oom."""
    from membench.results import store_result

    keys = []
    for model in ("llama-2-7b", "roberta-large"):
        for method in ("lora+chunkloss", "meft3+ckpt"):
            for b, status in ((1, "ok"), (2, "ok"), (4, "oom")):
                key = f"{model}/{method}/{b}"
                keys.append(key)
                cfg = dict(model=model, method=method, batch_size=b, seq_len=512, dtype="bf16", device="fake")
                if status == "ok":
                    r = RunResult(**cfg, activation_bytes=b * 3 * GiB, peak_activation_bytes=b * 4 * GiB,
                                  param_bytes=13 * GiB, trainable_param_bytes=GiB, grad_bytes=GiB,
                                  optimizer_bytes=2 * GiB, layers=[], provenance={},
                                  estimated_peak_bytes=(20 + b) * GiB)
                    store_result(db, RunRecord(result=r), key=key, created_at=created_at)
                else:
                    store_result(db, RunRecord(status="oom", config=cfg), key=key, created_at=created_at)
    return keys


def test_sweep_summary_headers_stay_whole_words(tmp_path, narrow, capsys):
    from membench.cli.format import console
    from membench.cli.sweep_view import summary_table

    db = str(tmp_path / "s.db")
    keys = _store_sweep(db, "2026-03-14T12:34:56.000+00:00")
    console.print(summary_table(db, keys, budget=24 * GiB))
    out = capsys.readouterr().out
    assert widest(out) <= 80 and "…" not in out
    headers = "model method seq dtype batch: status largest ok batch peak there activations there " \
              "largest batch in budget"
    assert split_words(headers, out) == []
    for name in ("llama-2-7b", "roberta-large", "lora+chunkloss", "meft3+ckpt", "4:oom"):
        assert name in out
    assert re.search(r"22\.00 GiB", out)  # a size on one line


def test_results_keeps_each_timestamp_on_one_line(cli, tmp_path, narrow):
    db = tmp_path / "s.db"
    _store_sweep(str(db), "2026-03-14T12:34:56.000+00:00")
    code, out, err = cli("results", "--db", str(db))
    assert code == 0, err
    assert widest(out) <= 80
    rows = [line for line in out.splitlines() if re.match(r"│\s+\d+ │", line)]
    stamped = [line for line in rows if "03-14 12:34" in line]
    assert len(stamped) == 12, out  # each run's timestamp whole, on its row
    assert split_words("llama-2-7b roberta-large lora+chunkloss meft3+ckpt created (UTC)", out) == []


# --- progress through a pipe: one line per finished probe / run ---

def test_fit_through_a_pipe_prints_one_line_per_probe(cli, tmp_path, narrow):
    out = tmp_path / "fit.json"
    code, stdout, err = cli("fit", "-m", "opt-125m", "--methods", "full,lora", "--gpu", "v100-32gb",
                            "--seq-len", "64", "--headroom", "0.988", "--jobs", "1", *tiny_args("opt", layers=1),
                            "--out", str(out))
    assert code == 0, err
    data = json.loads(out.read_text())
    lines = [line for line in err.splitlines() if line.startswith("fit ")]
    probes = {(r["method"], int(b)) for r in data["rows"] for b in r["probes"]}
    assert len(lines) == len(probes) >= 4, err
    for method, b in probes:
        assert any(line.startswith(f"fit {method} s64 batch {b}: ") for line in lines), (method, b)
    assert all(line.endswith(("fits", "does not fit")) for line in lines)
    assert not [line for line in err.splitlines() if "fitting" in line]  # no spinner leftovers
    assert data["schema_version"] == 3  # the fit JSON names its layout, as a run's JSON does


def test_fit_on_a_terminal_keeps_the_live_line(cli, monkeypatch):
    from membench.cli import fit as fit_cli

    monkeypatch.setattr(fit_cli, "live_progress", lambda: True)
    code, _out, err = cli("fit", "-m", "opt-125m", "--methods", "full", "--gpu", "v100-32gb", "--seq-len", "64",
                          "--headroom", "0.988", "--jobs", "1", *tiny_args("opt", layers=1))
    assert code == 0, err
    assert not [line for line in err.splitlines() if line.startswith("fit ")]


def test_sweep_progress_through_a_pipe_is_one_line_per_run(narrow, capsys):
    from collections import Counter

    from membench.cli.sweep_view import LineProgress, RichProgress, progress

    assert isinstance(progress(True), LineProgress)  # capsys' stderr is no terminal
    assert isinstance(progress(False), RichProgress) and not progress(False).enabled

    class Spec:
        def __init__(self, label):
            self.label = label

    p = progress(True)
    p.start(3, 2)
    counts = Counter()
    for label, status in (("opt-125m full b1 s8 fp32", "ok"), ("opt-125m full b2 s8 fp32", "oom"),
                          ("opt-125m full b4 s8 fp32", "failed")):
        counts[status] += 1
        p.advance(Spec(label), status, counts)
    p.finish()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "2 run(s) already in the database, skipped (--rerun runs them again)"
    assert err[2:] == ["[1/3] opt-125m full b1 s8 fp32: ok (ok 1, oom 0, failed 0)",
                       "[2/3] opt-125m full b2 s8 fp32: oom (ok 1, oom 1, failed 0)",
                       "[3/3] opt-125m full b4 s8 fp32: failed (ok 1, oom 1, failed 1)"]


# --- `membench run`: one answer for the target ---

def _profiled(**kw) -> RunResult:
    from membench import profile
    from membench.backbones.tiny import tiny

    model, ov = tiny("opt", layers=1)
    return profile(model, "lora", batch_size=1, seq_len=8, overrides=ov, **kw)


def _printed(result, capsys) -> str:
    from membench.cli.run import print_result

    print_result(result)
    return capsys.readouterr().out


def test_run_leads_with_what_a_cuda_target_needs(capsys, narrow):
    from membench.units import format_bytes

    r = _profiled(device="fake")
    out = _printed(r, capsys)
    first = out.splitlines()[0]
    assert first == f"needs {format_bytes(r.predicted_cuda['nvidia_smi_bytes'])} on a100-80gb (nvidia-smi, predicted)"
    assert "max reserved" in out.splitlines()[1] and "CUDA context" in out.splitlines()[1]  # its parts
    assert "needs: ~ nvidia-smi at the peak" in " ".join(out.split())  # the row it is, in the table


@pytest.mark.parametrize("device, how", [("fake", "predicted"), ("cpu", "measured")])
def test_run_leads_with_what_a_cpu_target_needs(capsys, narrow, device, how):
    from membench.units import format_bytes

    r = _profiled(device=device, target="cpu" if device == "fake" else None)
    out = _printed(r, capsys)
    assert out.splitlines()[0] == f"needs {format_bytes(r.estimated_peak_bytes)} on cpu (estimated peak, {how})"
    assert "needs: estimated peak of the step" in out


def test_run_measured_on_cuda_needs_what_nvidia_smi_showed(capsys, narrow):
    from membench.backends import needs
    from membench.cli.run import headline

    r = _profiled(device="fake")
    r.device, r.gpu = "cuda", "v100-32gb"
    r.cuda = {"max_allocated_bytes": 3 * GiB, "max_reserved_bytes": 4 * GiB, "paper_activation_bytes": GiB}
    r.nvml = {"available": True, "peak_used_bytes": 5 * GiB}
    assert needs(r) == (5 * GiB, "nvidia-smi", "measured")
    assert headline(r) == "needs 5.00 GiB on v100-32gb (nvidia-smi, measured)"
    assert "needs: NVML device used (peak)" in _printed(r, capsys)
    r.nvml = {"available": False, "reason": "no NVML"}  # then reserved + the GPU table's context
    assert needs(r) == (4 * GiB + r.predicted_cuda["context_bytes"], "max reserved + ~context", "measured")


# --- --version, shell completion ---

def test_version(cli):
    from membench import __version__

    code, out, _err = cli("--version")
    assert code == 0 and out.strip() == f"membench {__version__}"


def test_shell_completion(cli, monkeypatch):
    code, out, _err = cli("--help")
    assert code == 0 and "--install-completion" in out and "--show-completion" in out
    # what the installed script asks: complete "membench li"
    monkeypatch.setenv("_MEMBENCH_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "membench li")
    monkeypatch.setenv("COMP_CWORD", "1")
    code, out, _err = cli()
    assert code == 0 and out.split() == ["list"]
