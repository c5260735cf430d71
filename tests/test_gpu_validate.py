"""benchmarks/gpu_validate.py: its CPU-safe parts (refusal without CUDA, comparing, the table, the flow)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from membench.backbones.tiny import tiny
from membench.gpu import specs

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_validate.py"
MiB = 2**20


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


def test_standard_configs_cover_the_grid(gv):
    every = gv.standard_configs()
    full = [c for c in every if not c.quant]
    assert len(full) == 64 and len(set(full)) == 64
    qlora = [c for c in every if c.quant]  # the fused 4-bit kernel (few rows), its fallback (> 1536 rows), MEFT
    assert {c.batch_size * c.seq_len > 1536 for c in qlora} == {True, False} and {c.method for c in qlora} >= {
        "lora", "meft3"}
    assert {(c.model, c.method, c.dtype, c.attn, c.batch_size) for c in full} == {
        (m, me, d, a, b) for m in ("bert-base", "opt-125m") for me in ("full", "lora", "meft1", "meft3")
        for d in ("fp32", "bf16") for a in ("eager", "sdpa") for b in (2, 8)}
    assert len(gv.standard_configs(quick=True)) == 4
    assert {c.model for c in gv.standard_configs(big=True)[len(every):]} == {"opt-1.3b"}


def _runs(gv, **over):
    """A GPU run and its prediction as dicts (RunResult.to_dict shape, only the keys compare() reads)."""
    layers = [{"name": "embeddings", "activation_bytes": 10}, {"name": "layers.0", "activation_bytes": 1000},
              {"name": "layers.1", "activation_bytes": 1000}]
    pred = {"max_allocated_bytes": 101 * MiB, "max_reserved_bytes": 130 * MiB, "allocated_after_step_bytes": 40 * MiB,
            "nvidia_smi_bytes": 550 * MiB, "phases": {"forward": {"max_allocated_bytes": 90 * MiB}}}
    gpu = {"layers": layers, "activation_bytes": 2010, "peak_activation_bytes": 3000,
           "cuda": {"max_allocated_bytes": 100 * MiB, "max_reserved_bytes": 120 * MiB, "end_allocated_bytes": 40 * MiB,
                    "phases": {"forward": {"peak_allocated_bytes": 90 * MiB}}},
           "predicted_cuda": {"max_allocated_bytes": 100 * MiB, "max_reserved_bytes": 126 * MiB},
           "nvml": {"available": True, "peak_used_bytes": 1000 * MiB}}
    fake = {"layers": [dict(row) for row in layers], "activation_bytes": 2010, "peak_activation_bytes": 3000,
            "predicted_cuda": pred}
    fake["layers"][2]["activation_bytes"] = 1016
    for k, v in over.items():
        gpu[k] = v
    return ({"result": gpu, "sdpa_calls": [("flash", "flash"), ("flash", "efficient")]}, {"result": fake})


def test_compare(gv):
    cfg = gv.Config("opt-125m", "lora", "bf16", "sdpa", 2, 512)
    g, f = _runs(gv)
    r = gv.compare(cfg, g, f, nvml_base=500 * MiB)
    assert (r["sdpa_calls"], r["sdpa_agree"], r["sdpa_torch"], r["sdpa_ours"]) == (2, 1, "flash x2",
                                                                                    "efficient x1, flash x1")
    assert (r["layers"], r["layers_equal"], r["layer_diff_bytes"]) == (3, 2, {"layers.1": 16})
    assert r["nvml_used"] == 500 * MiB  # peak used minus the device's use before CUDA started
    assert gv._err(r["max_allocated"], r["max_allocated_pred"]) == pytest.approx(0.01)
    assert r["phases"]["forward"] == {"measured": {"peak_allocated_bytes": 90 * MiB},
                                      "predicted": {"max_allocated_bytes": 90 * MiB}}
    g, f = _runs(gv, nvml={"available": False, "reason": "no NVML"})
    assert gv.compare(cfg, g, f, nvml_base=None)["nvml_used"] is None


def test_markdown_table_and_summary(gv):
    cfg = gv.Config("opt-125m", "lora", "bf16", "sdpa", 2, 512)
    row = gv.compare(cfg, *_runs(gv), nvml_base=500 * MiB)
    rows = [row, {"config": dataclasses.asdict(gv.Config("bert-base", "full", "fp32", "eager", 8, 512)),
                  "error": "OutOfMemoryError: CUDA out of memory | really"},
            {"config": dataclasses.asdict(cfg), "skipped": "past --budget-s 420"}]
    md = gv.to_markdown(rows, {"device_name": "NVIDIA H200", "gpu": "h200-141gb", "torch": "2.11.0",
                               "cuda": "13.0", "date": "2026-12-01 03:00 UTC", "git_revision": "abc123",
                               "context_measured": 500 * MiB, "context_table": 520 * MiB, "wall_s": 300.0})
    lines = md.splitlines()
    assert lines[0] == "# GPU validation of the CUDA predictions"
    for text in ("NVIDIA H200", "`h200-141gb`", "torch 2.11.0", "CUDA 13.0", "abc123",
                 "CUDA context measured with NVML: 500.0 MiB (the GPU table says ~520.0 MiB)",
                 "1 configs measured, 1 failed, 1 skipped", "in 1 of 2 calls", "byte-equal in 0 of 1 configs",
                 "within 1% in 1 of 1 (largest error 1.00%)", "replaying the GPU's own trace: 1 of 1 (0.00%)",
                 "max_memory_reserved: within 3% in 0 of 1 (largest error 8.33%); replaying the GPU's own trace: 0 of 1 (5.00%)",
                 "within 5% in 0 of 1 (largest error 10.00%)"):
        assert text in md, text
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 3
    for line in table:  # every row has the header's number of cells ("|" inside a cell is escaped)
        assert len(line.replace("\\|", "").strip("|").split("|")) == len(gv.COLUMNS), line
    first = [c.strip() for c in table[2].strip("|").split("|")]
    assert first == ["opt-125m lora bf16 sdpa b2 s512", "flash x2", "1/2", "2/3", "0.0", "0.0", "100.0", "+1.00%",
                     "+0.00%", "120.0", "+8.33%", "+5.00%", "500.0", "+10.00%"]
    assert "failed: OutOfMemoryError" in table[3] and "skipped: past --budget-s" in table[4]


def test_sdpa_observer_records_each_call(gv):
    q = torch.randn(1, 2, 8, 16)
    with gv.sdpa_observer(specs.get("a100-80gb")) as obs:
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        torch.nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.0, is_causal=True)
    assert torch.equal(out, torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert len(obs.calls) == 2
    assert all(ours == "efficient" for _torch, ours in obs.calls)  # fp32 on sm80: no flash


def _stand_in(model, ov):
    """A GPU run without a GPU: the fake prediction, with the allocator's 'measurements' set to it."""
    from membench import profile

    def run_gpu(cfg, spec):
        r = profile(model, cfg.method, device="fake", target="cuda", gpu=spec, overrides=ov,
                    batch_size=1, seq_len=8, dtype=cfg.dtype, attn=cfg.attn)
        p = r.predicted_cuda
        r.cuda = {"max_allocated_bytes": p["max_allocated_bytes"], "max_reserved_bytes": p["max_reserved_bytes"],
                  "end_allocated_bytes": p["allocated_after_step_bytes"], "phases": {}}
        r.nvml = {"available": True, "peak_used_bytes": 100 * MiB + p["nvidia_smi_bytes"]}
        calls = [(b, b) for b, n in p["sdpa_backends"].items() for _ in range(n)]
        return {"result": r.to_dict(), "sdpa_calls": calls}

    def run_fake(cfg, gpu):
        r = profile(model, cfg.method, device="fake", target="cuda", gpu=gpu, overrides=ov,
                    batch_size=1, seq_len=8, dtype=cfg.dtype, attn=cfg.attn)
        return {"result": r.to_dict()}

    return run_gpu, run_fake


def test_main_flow_with_a_stand_in_gpu(gv, monkeypatch, tmp_path):
    model, ov = tiny("opt", layers=1)
    run_gpu, run_fake = _stand_in(model, ov)
    monkeypatch.setattr(gv, "run_gpu", run_gpu)
    monkeypatch.setattr(gv, "run_fake", run_fake)
    monkeypatch.setattr(gv, "start_cuda", lambda: specs.get("a100-80gb"))
    used = iter([100 * MiB, 520 * MiB])
    monkeypatch.setattr(gv, "nvml_used", lambda: next(used))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Stand-in GPU")
    out, js = tmp_path / "v.md", tmp_path / "v.json"
    code = gv.main(["--quick", "--limit", "2", "--jobs", "0", "--out", str(out), "--json", str(js)])
    assert code == 0
    md = out.read_text()
    assert "Stand-in GPU" in md and "opt-125m full bf16 sdpa b4 s256" in md
    assert "CUDA context measured with NVML: 420.0 MiB" in md
    data = json.loads(js.read_text())
    assert data["meta"]["gpu"] == "a100-80gb"
    rows = data["rows"]
    assert len(rows) == 2
    for r in rows:
        assert r["layers_equal"] == r["layers"] and r["ledger_cuda"] == r["ledger_fake"] > 0
        assert r["max_allocated"] == r["max_allocated_pred"] > 0
        assert r["nvml_used"] == r["nvml_pred"]
        assert r["sdpa_agree"] == r["sdpa_calls"]
    assert rows[0]["sdpa_torch"] == "flash x1"  # bf16 sdpa on sm80; the eager config calls no SDPA
    assert rows[1]["sdpa_calls"] == 0
    assert "byte-equal in 2 of 2 configs" in md and "within 1% in 2 of 2" in md


def test_budget_skips_the_rest(gv, monkeypatch, tmp_path):
    monkeypatch.setattr(gv, "start_cuda", lambda: specs.get("a100-80gb"))
    monkeypatch.setattr(gv, "nvml_used", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Stand-in GPU")
    out = tmp_path / "v.md"
    assert gv.main(["--quick", "--jobs", "0", "--budget-s", "0", "--out", str(out)]) == 0
    md = out.read_text()
    assert md.count("skipped: past --budget-s 0") == 4 and "No config measured (0 failed, 4 skipped)" in md
