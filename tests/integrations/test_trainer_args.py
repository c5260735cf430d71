"""`membench run --trainer-args FILE`: TrainingArguments fields as run options; nothing dropped silently."""

from __future__ import annotations

import json

import pytest

from membench.errors import UserError
from membench.integrations.trainer_args import recipe


def _file(tmp_path, data, suffix=".json"):
    p = tmp_path / f"args{suffix}"
    if suffix == ".json":
        p.write_text(json.dumps(data))
    else:
        import yaml

        p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_the_memory_fields_become_run_options(tmp_path, suffix):
    r = recipe(_file(tmp_path, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 8, "bf16": True,
                                "optim": "paged_adamw_8bit", "gradient_checkpointing": True, "max_seq_length": 256,
                                "learning_rate": 2e-4, "output_dir": "out", "deepspeed": "ds.json", "foo": 1},
                     suffix))
    assert r.options == {"batch_size": 4, "grad_accum": 8, "precision": "bf16-mixed", "optimizer": "paged-adamw-8bit",
                         "seq_len": 256}
    assert r.checkpointing and r.not_memory == ["learning_rate", "output_dir"] and r.unknown == ["foo"]
    assert len(r.unmodelled) == 1 and r.unmodelled[0].startswith("deepspeed='ds.json': DeepSpeed")


@pytest.mark.parametrize(("data", "message"), [
    ({"optim": "lion_32bit"}, "optim='lion_32bit' has no membench optimizer"),
    ({"bf16": True, "fp16": True}, "bf16 and fp16 are both true"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size=0 is not a positive integer"),
    ([1, 2], "expected a mapping"),
])
def test_bad_files_are_one_line(tmp_path, data, message):
    with pytest.raises(UserError, match=message):
        recipe(_file(tmp_path, data))


def test_run_with_trainer_args(cli, tmp_path):
    args = _file(tmp_path, {"per_device_train_batch_size": 2, "fp16": True, "gradient_accumulation_steps": 2,
                            "optim": "adafactor", "max_grad_norm": 1.0, "num_train_epochs": 3})
    out = tmp_path / "r.json"
    code, stdout, err = cli("run", "-m", "opt-125m", "--method", "lora", "-s", "32", "--override",
                            "num_hidden_layers=1", "--trainer-args", str(args), "--out", str(out))
    assert code == 0, err
    data = json.loads(out.read_text())
    assert (data["batch_size"], data["precision"], data["grad_accum"]) == (2, "16-mixed", 2)
    assert data["optimizer"] == "adafactor"
    assert "max_grad_norm=1.0: gradient clipping" in err and "num_train_epochs" in stdout
    code, _, err = cli("run", "-m", "opt-125m", "-b", "3", "--trainer-args", str(args))
    assert code == 2 and "--batch-size 3 and --trainer-args" in err
