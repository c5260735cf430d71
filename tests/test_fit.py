"""`membench fit`: the batch-size search, the fit against the profiles it rests on, the CLI and its errors."""

from __future__ import annotations

import json
import random

import pytest

from membench import profile
from membench.backbones.tiny import tiny
from membench.errors import UserError
from membench.fit import Search, budget, fit, search_batch
from membench.gpu import specs
from membench.spec import RunSpec

MiB = 2**20


def _search(cost, limit, most):
    calls = []
    lo, hi = search_batch(lambda b: calls.append(b) or cost(b), limit, most)
    return lo, hi, calls


def _truth(cost, limit, most):
    return max((b for b in range(1, most + 1) if cost(b) <= limit), default=0)


def test_an_exact_line_takes_four_profiles():
    cost = lambda b: 3_000 * MiB + 450 * MiB * b  # noqa: E731
    lo, hi, calls = _search(cost, 20_000 * MiB, 4096)
    assert (lo, hi) == (37, 38) and calls == [1, 8, 37, 38]


def test_a_bent_line_is_re_aimed_not_bisected():
    """opt-1.3b full bf16 s512 on a 24 GB GPU (its predicted reserved GiB per batch size): the optimizer's
    peak dominates small batches, activations large ones, so the first estimate overshoots and the
    bracket's secant lands short; aiming again through the narrowed bracket ends it in 6 profiles (8 by
    bisection)."""
    gib = {1: 13.525, 8: 15.883, 14: 21.232, 15: 22.297, 16: 23.352, 18: 25.908, 21: 28.773, 27: 33.65}
    lo, hi, calls = _search(lambda b: int(gib[b] * 2**30), 24_070_900_940, 4096)
    assert (lo, hi) == (15, 16) and calls == [1, 8, 27, 14, 15, 16]


def test_edges():
    assert _search(lambda b: 100 * b, 50, 4096)[:2] == (0, 1)  # batch 1 does not fit
    assert _search(lambda b: 100 * b, 10**9, 64)[:2] == (64, None)  # everything fits up to the cap
    assert _search(lambda b: 100 * b, 10**9, 1) == (1, None, [1])
    assert _search(lambda b: 100, 10**9, 500)[:2] == (500, None)  # flat: steps out to the cap


@pytest.mark.parametrize("seed", range(3))
def test_rounded_and_bent_costs_find_the_boundary(seed):
    """Segment rounding (2 or 20 MiB) and a bend (cached blocks absorb small batches): still the true
    boundary, in a handful of profiles."""
    rng = random.Random(seed)
    for _ in range(200):
        base, slope = rng.randint(0, 20_000) * MiB, rng.randint(1, 2_000) * MiB
        grain, knee = rng.choice([512, 2 * MiB, 20 * MiB]), rng.randint(1, 40)
        cost = lambda b, base=base, slope=slope, grain=grain, knee=knee: -(  # noqa: E731
            -(base + slope * max(b, knee) + slope // 3 * b) // grain) * grain
        limit = rng.randint(0, 80_000) * MiB
        lo, hi, calls = _search(cost, limit, 4096)
        truth = _truth(cost, limit, 4096)
        assert lo == truth and hi == (truth + 1 if truth < 4096 else None)
        # extrapolation, secant + neighbour, one re-aimed secant that did not halve, log2(4096) halvings
        assert len(calls) <= 6 + 1 + 12, calls


def test_budget_and_its_errors():
    spec = specs.get("rtx4090-24gb")
    assert budget("rtx4090-24gb", 0.1) == (int(spec.memory_bytes * 0.9), spec.context_bytes)
    for bad in (-0.1, 1.0, 2):
        with pytest.raises(UserError, match="--headroom"):
            budget("rtx4090-24gb", bad)
    with pytest.raises(UserError, match="known GPUs: v100-32gb"):
        budget("a200", 0.05)


def test_fit_agrees_with_the_profiles_it_rests_on():
    """A small OPT on what a V100 leaves at 98.8% headroom (~83 MiB beyond the context): the batch size
    found fits by its own profile, the next one does not, and the row says by how much."""
    model, ov = tiny("opt", layers=2, hidden=128, heads=2)
    rows = fit(RunSpec(model=model, gpu="v100-32gb", dtype="fp32", overrides=ov), ["full", "meft1"], seq_lens=[128],
               headroom=0.988, search=Search(jobs=1))
    assert [(r.method, r.seq_len) for r in rows] == [("full", 128), ("meft1", 128)]
    limit, context = budget("v100-32gb", 0.988)
    for r in rows:
        assert r.max_batch_size >= 1 and r.first_failing_batch_size == r.max_batch_size + 1

        def reserved(b, r=r):
            return profile(model, r.method, batch_size=b, seq_len=r.seq_len, dtype="fp32", device="fake",
                           target="cuda", gpu="v100-32gb", overrides=ov).predicted_cuda["max_reserved_bytes"]

        assert reserved(r.max_batch_size) == r.predicted_max_reserved_bytes
        assert r.predicted_max_reserved_bytes + context <= limit
        assert reserved(r.max_batch_size + 1) == r.first_failing_reserved_bytes
        assert r.first_failing_reserved_bytes + context - limit == r.over_by_bytes > 0
        assert len(r.probes) <= 10, r.probes
    assert rows[1].max_batch_size > rows[0].max_batch_size  # MEFT's activations are flat in depth


def test_a_probe_whose_inputs_exceed_the_gpu_does_not_fit():
    """A batch whose inputs alone exceed the GPU is a probe that fails (cost: the inputs, a lower bound), not an
    error that ends the search."""
    from membench.fit import FitTask, _reserved

    model, ov = tiny("opt", layers=1)
    limit, context = budget("v100-32gb", 0.0)
    task = FitTask(RunSpec(model=model, gpu="v100-32gb", device="fake", target="cuda", overrides=ov), limit, context,
                   4096)
    b = 2**28  # x 128 tokens, ids and labels (int64): 512 GiB
    assert _reserved("full", 128, b, task) == b * 128 * 8 * 2 > budget("v100-32gb", 0.0)[0]


def test_fit_in_worker_processes_gives_the_same_rows():
    model, ov = tiny("opt", layers=2)
    spec, kw = RunSpec(model=model, gpu="v100-32gb", dtype="fp32", overrides=ov), dict(seq_lens=[64], headroom=0.99)
    here = fit(spec, ["full", "lora"], search=Search(jobs=1), **kw)
    there = fit(spec, ["full", "lora"], search=Search(jobs=2), **kw)
    assert [r.to_dict() for r in here] == [r.to_dict() for r in there]


def test_cli_writes_the_table_and_json(cli, tmp_path):
    model, ov = tiny("opt", layers=2)
    out = tmp_path / "fit.json"
    args = ["fit", "-m", model, "--methods", "full,meft3", "--gpu", "v100-32gb", "--seq-lens", "64,128",
            "--headroom", "0.988", "--jobs", "1", "--out", str(out)]
    for k, v in ov.items():
        args += ["--override", f"{k}={v}"]
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "opt-125m on v100-32gb" in stdout and "meft3" in stdout
    data = json.loads(out.read_text())
    assert data["gpu"] == "v100-32gb" and len(data["rows"]) == 4
    for row in data["rows"]:
        assert {"method", "max_batch_size", "predicted_max_reserved_bytes", "gpu", "seq_len"} <= set(row)
        assert row["gpu"] == "v100-32gb" and row["max_batch_size"] >= 1


def test_cli_when_nothing_fits(cli, tmp_path):
    """Batch 1 of bert-base full fine-tuning does not fit what a V100 leaves at 99% headroom."""
    out = tmp_path / "fit.json"
    code, stdout, err = cli("fit", "-m", "bert-base", "--methods", "full", "--gpu", "v100-32gb", "--headroom",
                            "0.99", "--seq-len", "128", "--out", str(out))
    assert code == 0, err
    assert "bert-base on v100-32gb" in stdout
    row = json.loads(out.read_text())["rows"][0]
    assert row["max_batch_size"] == 0 and row["predicted_max_reserved_bytes"] is None
    assert row["first_failing_batch_size"] == 1 and row["over_by_bytes"] > 0


@pytest.mark.parametrize("args, message", [
    (["--gpu", "a200"], "unknown GPU 'a200'; known GPUs: v100-32gb"),
    (["--methods", "full,nope"], "unknown method 'nope'"),
    (["--seq-len", "0"], "--seq-lens [0]: expected positive integers"),
    (["--seq-lens", "128,-5"], "expected positive integers"),
    (["--seq-lens", "128,x"], "--seq-lens: 'x' is not an integer"),
    (["--seq-len", "4096"], "longer than bert-base's 512 positions"),
    (["--headroom", "1.5"], "--headroom 1.5: expected a fraction in [0, 1)"),
    (["--max-batch-size", "0"], "--max-batch-size 0: expected a positive integer"),
    (["--jobs", "0"], "--jobs 0: expected a positive integer"),
    (["--optimizer", "adam"], "unknown optimizer 'adam'"),
    (["--dtype", "int8"], "dtype"),
    (["-m", "bert-huge"], "unknown model 'bert-huge'"),
    (["--methods", "lora,full,lora"], "--methods lists lora more than once"),
    (["--seq-lens", "128,256,128"], "--seq-lens lists 128 more than once"),
    (["--seq-len", "128", "--seq-lens", "256"], "give --seq-len (one length) or --seq-lens (a grid), not both"),
])
def test_cli_bad_input_exits_2_with_one_line(cli, args, message):
    code, _out, err = cli("fit", "-m", "bert-base", "--methods", "full", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_cli_bad_out_path_writes_nothing(cli, tmp_path):
    (tmp_path / "a-file").write_text("")
    code, _out, err = cli("fit", "-m", "bert-base", "--out", str(tmp_path / "a-file" / "such" / "fit.json"))
    assert code == 2 and "a-file is not a folder" in err
    code, _out, err = cli("fit", "-m", "bert-base", "--out", str(tmp_path))
    assert code == 2 and "is a folder" in err


def test_list_gpus_shows_the_whole_table(cli):
    code, out, _err = cli("list", "--gpus")
    assert code == 0
    for name in specs.names():  # folded where narrow, never cut
        assert name in out
    assert "cudnn" in out and "…" not in out


def test_fit_searches_the_micro_batch_at_an_accumulation(cli, tmp_path):
    """With --grad-accum 4 the probes run four micro-steps, whose gradients stay allocated through the next
    forward: the largest micro-batch is at most the plain step's, and its own profile (x4) fits."""
    model, ov = tiny("opt", layers=2, hidden=128, heads=2)
    spec = RunSpec(model=model, gpu="v100-32gb", dtype="fp32", overrides=ov)
    plain = fit(spec, ["full"], seq_lens=[128], headroom=0.988, search=Search(jobs=1))[0]
    accum = fit(spec.replace(grad_accum=4), ["full"], seq_lens=[128], headroom=0.988, search=Search(jobs=1))[0]
    assert 1 <= accum.max_batch_size <= plain.max_batch_size
    r = profile(model, "full", batch_size=accum.max_batch_size, seq_len=128, dtype="fp32", device="fake",
                gpu="v100-32gb", overrides=ov, grad_accum=4)
    assert r.predicted_cuda.max_reserved_bytes == accum.predicted_max_reserved_bytes
    out = tmp_path / "fit.json"
    args = ["fit", "-m", model, "--methods", "full", "--gpu", "v100-32gb", "-s", "128", "--headroom", "0.988",
            "--jobs", "1", "--grad-accum", "4", "--precision", "16-mixed", "--out", str(out)]
    for k, v in ov.items():
        args += ["--override", f"{k}={v}"]
    code, stdout, err = cli(*args)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert (data["grad_accum"], data["precision"], data["optimizer"]) == (4, "16-mixed", "adamw")
    said = " ".join(stdout.split())  # the title wraps at the console's width
    assert "largest micro-batch size" in said and "16-mixed" in said and "x4 accumulated" in said


def test_fit_compares_quantized_bases_row_by_row(cli, tmp_path):
    """`--quants none,nf4`: a row per method and base, each found by the profiles of its own base (QLoRA beside
    LoRA and MEFT on one GPU); the --quant-* options apply to the quantized rows only."""
    pytest.importorskip("bitsandbytes")
    model, ov = tiny("llama", layers=2, hidden=128, heads=2)
    spec = RunSpec(model=model, gpu="v100-32gb", dtype="fp16", overrides=ov, quant_double_quant=True, kbit_ckpt=False)
    rows = fit(spec, ["lora", "meft1"], seq_lens=[128], headroom=0.988, search=Search(jobs=1), quants=[None, "nf4"])
    assert [(r.method, r.quant) for r in rows] == [("lora", ""), ("meft1", ""), ("lora", "nf4+dq"),
                                                   ("meft1", "nf4+dq")]
    for r in rows:
        kw = dict(quant="nf4", quant_double_quant=True, kbit_ckpt=False) if r.quant else {}
        direct = profile(model, r.method, batch_size=r.max_batch_size, seq_len=128, dtype="fp16", device="fake",
                         target="cuda", gpu="v100-32gb", overrides=ov, **kw)
        assert direct.predicted_cuda.max_reserved_bytes == r.predicted_max_reserved_bytes
    plain, quantized = rows[0], rows[2]
    assert quantized.predicted_max_reserved_bytes != plain.predicted_max_reserved_bytes

    out = tmp_path / "fit.json"
    args = ["fit", "-m", model, *[a for k, v in ov.items() for a in ("--override", f"{k}={v}")], "--methods", "lora",
            "--quants", "none,nf4", "--no-kbit-ckpt", "--gpu", "v100-32gb", "--dtype", "fp16", "-s", "64",
            "--max-batch-size", "2", "-j", "1", "--out", str(out)]
    code, stdout, stderr = cli(*args)
    assert code == 0, stderr
    assert [r["quant"] for r in json.loads(out.read_text())["rows"]] == ["", "nf4"]
    code, _, stderr = cli(*args[:-2], "--quant", "nf4")
    assert code == 2 and "not both" in stderr


def test_replayed_rows_equal_profiled_rows():
    """A 12-layer OPT: every probe replayed (shallow profiles at batch sizes 2-4, the answer and the next batch size
    checked by profiles) gives the row --exact gives (every probe a profile of the whole model), figures included;
    worker processes give the same rows; prefix tuning's row is searched over profiles, and says why."""
    model, ov = tiny("opt", layers=12, hidden=64, heads=2)
    spec = RunSpec(model=model, gpu="v100-32gb", dtype="fp32", overrides=ov)
    kw = dict(seq_lens=[128], headroom=0.985)
    replayed = fit(spec, ["full", "meft3", "prefix"], search=Search(jobs=1), **kw)
    exact = fit(spec, ["full"], search=Search(jobs=1, exact=True), **kw)[0]
    assert [r.searched for r in replayed] == ["replays", "replays", "profiles"]
    assert "replays do not apply" in replayed[2].note  # prefix tuning: a tensor sized by the depth
    assert exact.searched == "profiles" and exact.note.startswith("--exact")
    got = replayed[0]
    assert got.max_batch_size == exact.max_batch_size > 1
    assert (got.first_failing_batch_size, got.predicted_max_reserved_bytes, got.first_failing_reserved_bytes) == (
        exact.first_failing_batch_size, exact.predicted_max_reserved_bytes, exact.first_failing_reserved_bytes)
    assert all(got.probes[k] == v for k, v in exact.probes.items() if k in got.probes)
    assert replayed[1].max_batch_size > got.max_batch_size  # MEFT's activations are flat in depth
    there = fit(spec, ["full", "meft3"], search=Search(jobs=2), **kw)  # rows replayed in worker processes
    assert [r.to_dict() for r in there] == [r.to_dict() for r in replayed[:2]]


def test_a_replay_that_disagrees_with_its_check_falls_back(monkeypatch):
    """Negative control: a replay model whose sizes were bent by one byte per sample fails the check at the answer,
    and the row is searched over profiles (its note says why)."""
    from membench.runner import extrapolated

    real = extrapolated.replays

    def bent(spec, progress=None):
        replays = real(spec, progress)
        place = next(iter(replays.model.slopes))
        replays.model.slopes[place] += 1
        return replays

    monkeypatch.setattr(extrapolated, "replays", bent)
    model, ov = tiny("opt", layers=12, hidden=64, heads=2)
    row = fit(RunSpec(model=model, gpu="v100-32gb", dtype="fp32", overrides=ov), ["lora"], seq_lens=[128],
              headroom=0.985, search=Search(jobs=1))[0]
    assert row.searched == "profiles" and "differs from the sizes learned" in row.note
