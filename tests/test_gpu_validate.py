"""benchmarks/gpu_validate.py: its CPU-safe parts (refusal without CUDA, the table, the flow)."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from membench.backbones.tiny import tiny

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_validate.py"


@pytest.fixture(scope="module")
def gv():
    spec = importlib.util.spec_from_file_location("gpu_validate", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_validate"] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_without_cuda(tmp_path):
    out = tmp_path / "v.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: gpu_validate needs a CUDA GPU")
    assert not out.exists()


def test_standard_configs(gv):
    full = gv.standard_configs()
    assert len(full) == 32 and len(set(full)) == 32
    assert {c.model for c in full} == {"opt-125m", "bert-base"}
    assert {(c.dtype, c.attn, c.method) for c in full} == {(d, a, m) for d in ("bf16", "fp32")
                                                           for a in ("sdpa", "eager") for m in ("full", "lora")}
    assert len(gv.standard_configs(quick=True)) == 4
    assert gv.standard_configs(big=True)[-1].model == "opt-1.3b"


def _row(gv, **kw):
    base = {"config": dataclasses.asdict(gv.Config("opt-125m", "lora", "bf16", "sdpa", 4, 128)),
            "ledger_cuda": 100 * gv.MiB, "ledger_fake": 110 * gv.MiB, "kept_after_forward": 130 * gv.MiB,
            "paper_activation": 200 * gv.MiB, "live_peak_cuda": 190 * gv.MiB, "live_peak_fake": 210 * gv.MiB,
            "layers_equal": 3, "layers": 14}
    return {**base, **kw}


def test_markdown_table(gv):
    rows = [_row(gv), _row(gv, ledger_fake=100 * gv.MiB),
            {"config": dataclasses.asdict(gv.Config("bert-base", "full", "fp32", "eager", 8, 512)),
             "error": "OutOfMemoryError: CUDA out of memory | really"}]
    md = gv.to_markdown(rows, {"device_name": "NVIDIA H100", "torch": "2.13.0", "cuda": "12.8",
                               "date": "2026-11-28 03:00 UTC", "git_revision": "abc123"})
    lines = md.splitlines()
    assert lines[0] == "# GPU validation of the profilers"
    assert "NVIDIA H100" in md and "torch 2.13.0" in md and "CUDA 12.8" in md and "abc123" in md
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 3
    ncols = len(gv.COLUMNS)
    # every row has the header's number of cells ("|" inside a cell is escaped)
    for line in table:
        assert len(line.replace("\\|", "").strip("|").split("|")) == ncols, line
    first = [c.strip() for c in table[2].strip("|").split("|")]
    assert first == ["opt-125m lora bf16 sdpa b4 s128", "100.0", "110.0", "1.100", "3/14", "130.0", "200.0",
                     "190.0", "210.0", "1.050"]
    assert "failed: OutOfMemoryError" in table[4]
    assert "2 configs measured, 1 failed; the fake prediction of the saved bytes is exact in 1 of 2." in md


def test_main_flow_with_a_stand_in_gpu(gv, monkeypatch, tmp_path):
    """No GPU here: stand in for `profile(device="cuda")` with a cpu run plus allocator figures,
    to check what main() and measure() do with them."""
    import membench

    model, ov = tiny("opt", layers=1)
    real_profile = membench.profile

    def fake_profile(name, method, *, device, **kw):
        kw = {**kw, "batch_size": 1, "seq_len": 8, "attn": kw["attn"], "dtype": kw["dtype"]}
        r = real_profile(model, method, device="cpu" if device == "cuda" else device, overrides=ov, **kw)
        if device == "cuda":
            r.cuda = {"start_allocated_bytes": 1000, "max_allocated_bytes": 5000, "end_allocated_bytes": 1500,
                      "paper_activation_bytes": 3500,
                      "phases": {"forward": {"end_allocated_bytes": 1000 + r.activation_bytes}}}
            r.nvml = {"available": False, "reason": "stand-in"}
        return r

    monkeypatch.setattr(membench, "profile", fake_profile)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Stand-in GPU")
    out, js = tmp_path / "v.md", tmp_path / "v.json"
    code = gv.main(["--quick", "--limit", "2", "--out", str(out), "--json", str(js)])
    assert code == 0
    md = out.read_text()
    assert "Stand-in GPU" in md and "opt-125m full bf16 sdpa b4 s256" in md
    import json

    rows = json.loads(js.read_text())["rows"]
    assert len(rows) == 2
    for r in rows:
        assert r["ledger_cuda"] == r["ledger_fake"] > 0  # cpu stands in for cuda: exact
        assert r["layers_equal"] == r["layers"]
        assert r["paper_activation"] == 3500 and r["kept_after_forward"] == r["ledger_cuda"]
        assert r["nvml_peak_used"] is None
    assert "exact in 2 of 2" in md
