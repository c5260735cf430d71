"""`membench list --verbose`: each method's trainable parameter count, which tensors train, its config."""

from __future__ import annotations

import re


def test_list_verbose_shows_what_trains(cli, monkeypatch):
    from membench.cli.format import console

    monkeypatch.setattr(console, "_width", 400)  # one line per row, so cells can be searched
    code, out, _ = cli("list", "--verbose", "--model", "opt-125m")
    assert code == 0, out
    assert "what each method trains on opt-125m" in out
    text = re.sub(r" +", " ", out)
    # opt-125m: Pfeiffer r=64 on 12 layers = 12 * (2*768*64 + 64 + 768) trainable parameters
    assert f"{12 * (2 * 768 * 64 + 64 + 768):,}" in text
    assert "*.pfeiffer_ffn.down" in text and "init=zero" in text
    assert "every *.bias" in text
    assert "target_modules=q_proj,v_proj" in text  # resolved family default, not "(family default)"


def test_list_verbose_unknown_model_is_a_user_error(cli):
    code, out, err = cli("list", "--verbose", "--model", "nope")
    assert code == 2 and "unknown model 'nope'" in out + err
    assert "models (shipped configs" not in out  # fails before printing anything


def test_run_checkpointing_flag_adds_the_modifier(cli, tmp_path):
    from membench.backbones.tiny import tiny_overrides
    from membench.result import RunResult

    sets = [a for k, v in tiny_overrides("opt").items() for a in ("--override", f"{k}={v}")]
    out = tmp_path / "r.json"
    code, stdout, _ = cli("run", "-m", "opt-125m", *sets, "--method", "lora", "--checkpointing", "-b", "2",
                          "-s", "16", "--device", "fake", "--out", str(out))
    assert code == 0, stdout
    res = RunResult.load(str(out))
    assert res.method == "lora+ckpt" and res.recompute_bytes > 0
