"""Starting point and `membench verify` (per-layer reconstruction/gradient errors, error bounding)."""

from __future__ import annotations

import json

import pytest
import torch

from membench.verify import starting_point, verify_numbers

from .methods.meft.meft_helpers import PAPER, VARIANTS, batch, make


def _mean_gap(family, variant, lam, beta):
    """Per-layer gaps with the adapters' output projections zeroed: what is left is the lam/beta leak.

    (The adapters' own N(0, 0.02^2) contribution does not depend on lam/beta; on tiny random pre-LN models
    it is large, because the FFN-parallel adapter reads LayerNorm outputs (~1 per element) while the
    residual stream is ~0.02 per element.)"""
    model, fam, config = make(family, variant, 4, options={"lam": lam, "beta": beta, "output": "scaled"})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter" in name and name.endswith("up.weight"):
                p.zero_()
    gaps = starting_point(model, batch(fam, config))
    return [g for per_stack in gaps["layers"].values() for g in per_stack[1:]], gaps


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", ["bert", "opt"])
def test_starting_point_gap_shrinks_with_lam_beta(family, variant):
    lam, beta = PAPER[variant]
    paper, gaps = _mean_gap(family, variant, lam, beta)
    # shrink the scales the variant sets below 1 (MEFT2's lam = 1 scales the PLM stream itself: it stays 1)
    small, _ = _mean_gap(family, variant, lam / 10 if lam < 1 else lam, beta / 10 if beta < 1 else beta)
    assert gaps["layers"]["layers"][0] == 0.0  # the bottom layer sees the embedding output in both models
    assert all(g > 0 for g in paper)
    assert sum(small) < 0.3 * sum(paper), (paper, small)


def test_verify_numbers_are_plain_data_and_fp64_passes():
    from membench.backbones.tiny import tiny_overrides
    from membench.spec import RunSpec

    res = verify_numbers(RunSpec(model="bert-base", method="meft1", dtype="fp64", batch_size=2, seq_len=8,
                                 overrides=tiny_overrides("bert", layers=3, hidden=16)))
    json.dumps(res)  # plain data only
    assert res["passed"] and res["rng_state_equal"]
    assert [r["name"] for r in res["layers"]] == ["layers.0", "layers.1", "layers.2"]
    assert all(r["grad_error"] < 1e-9 and r["recon_error"] < 1e-9 for r in res["layers"])
    assert res["options"]["lam"] == 0.1  # resolved values, not sentinels


def test_verify_cli_fails_deep_fp32_meft3_and_checkpoints_fix_it(cli, tmp_path):
    args = ["verify", "--model", "bert-base", "--method", "meft3", "-b", "2", "-s", "8",
            "--override", "num_hidden_layers=8", "--override", "hidden_size=32",
            "--override", "intermediate_size=64", "--override", "num_attention_heads=2"]
    torch.set_num_threads(1)
    code, out, _ = cli(*args, "--out", str(tmp_path / "v.json"))
    assert code == 1 and "FAIL" in out
    data = json.loads((tmp_path / "v.json").read_text())
    errs = [r["recon_error"] for r in data["layers"]]
    assert errs[0] > 1e3 * errs[-1]  # the error grows from the top layer down
    code, out, _ = cli(*args, "--option", "checkpoint_every=2")
    assert code == 0 and "PASS" in out
    code, _, err = cli("verify", "--model", "bert-base", "--method", "lora")
    assert code == 2 and "meft" in err


def test_verify_db_stores_per_layer_series_and_report_draws_them(cli, tmp_path):
    """`membench verify --db` stores a kind="verify" run; `membench report` turns it into the MEFT error figure."""
    from membench.results import load, load_series

    db = tmp_path / "v.db"
    args = ["verify", "--model", "bert-base", "--method", "meft1", "--dtype", "fp64", "-b", "2", "-s", "8",
            "--override", "num_hidden_layers=3", "--override", "hidden_size=16", "--override", "intermediate_size=32",
            "--override", "num_attention_heads=2", "--db", str(db), "--out", str(tmp_path / "v.json")]
    code, out, err = cli(*args)
    assert code == 0, err
    assert "stored as run" in out
    res = json.loads((tmp_path / "v.json").read_text())
    runs = load(db)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["kind"] == "verify" and run["status"] == "ok" and run["method"] == "meft1" and run["dtype"] == "fp64"
    assert run["passed"] == 1.0 and run["max_grad_error"] == pytest.approx(res["max_grad_error"])
    cfg = json.loads(run["config"])
    assert cfg["overrides"]["num_hidden_layers"] == 3 and cfg["method_options"]["lam"] == 0.1
    series = load_series(db)
    assert set(series["name"]) == {"recon_error", "grad_error", "start_gap"}
    for name, field in (("recon_error", "recon_error"), ("grad_error", "grad_error"), ("start_gap", "start_gap")):
        s = series[series["name"] == name].sort_values("step")
        assert s["step"].tolist() == [r["layer"] for r in res["layers"]] == [0, 1, 2]
        assert s["value"].tolist() == pytest.approx([r[field] for r in res["layers"]])
    # the same check again replaces its row (stable key) instead of adding a second line to the figure
    assert cli(*args)[0] == 0
    assert len(load(db)) == 1 and load(db).iloc[0]["attempts"] == 2

    code, out, err = cli("report", "--db", str(db), "-o", str(tmp_path / "rep"))
    assert code == 0, err
    pngs = sorted((tmp_path / "rep").glob("verify-*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 5000
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "MEFT reconstruction and gradient error" in page
    from membench.report.figures import error_kind

    # each stored series lands in its own panel of that figure
    assert {n: error_kind(n) for n in series["name"].unique()} == {
        "recon_error": "reconstruction error", "grad_error": "gradient error", "start_gap": "starting-point gap"}


def test_verify_db_refuses_a_file_that_is_not_a_database(cli, tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("not sqlite")
    code, _out, err = cli("verify", "--model", "bert-base", "--db", str(bad))
    assert code == 2 and "Traceback" not in err
    assert bad.read_text() == "not sqlite"
