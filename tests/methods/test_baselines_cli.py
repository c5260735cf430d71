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
    assert "target_modules=['q_proj', 'v_proj']" in text  # resolved family default, not "(family default)"


def test_list_verbose_unknown_model_is_a_user_error(cli):
    code, out, err = cli("list", "--verbose", "--model", "nope")
    assert code == 2 and "unknown model 'nope'" in out + err
    assert "models (shipped configs" not in out  # fails before printing anything
