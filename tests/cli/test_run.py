"""`membench run`: the happy path and every bad input of the issue (one line, `error:`, exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from membench.backbones.tiny import tiny_overrides


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables are checked for their text: do not let a narrow $COLUMNS wrap the cells."""
    from membench.cli import format as fmt

    monkeypatch.setattr(fmt.console, "width", 200)


def tiny_args(family="opt", **kw):
    return [a for k, v in tiny_overrides(family, **kw).items() for a in ("--override", f"{k}={v}")]


def test_run_happy_path_writes_json(cli, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, stderr = cli("run", "--model", "opt-125m", "--method", "lora", "--batch-size", "2",
                               "--seq-len", "16", "--dtype", "bf16", "--device", "fake", "--attn", "eager",
                               *tiny_args(), "--out", str(out))
    assert code == 0, stderr
    for text in ("layers.0", "layers.1", "embeddings", "head", "total", "trainable parameters",
                 "optimizer state", "estimated peak", "opt-125m", "lora", "b2 s16", "bf16", "fake"):
        assert text in stdout, text
    assert "Traceback" not in stderr
    d = json.loads(out.read_text())
    assert {"model", "method", "batch_size", "seq_len", "dtype", "device", "activation_bytes",
            "peak_activation_bytes", "param_bytes", "trainable_param_bytes", "grad_bytes", "optimizer_bytes",
            "layers", "provenance"} <= set(d)
    assert (d["model"], d["method"], d["batch_size"], d["seq_len"], d["dtype"], d["device"], d["attn"]) == \
        ("opt-125m", "lora", 2, 16, "bf16", "fake", "eager")
    assert [row["name"] for row in d["layers"]][:3] == ["embeddings", "layers.0", "layers.1"]
    assert d["activation_bytes"] == sum(row["activation_bytes"] for row in d["layers"]) > 0
    assert d["provenance"]["config"]["num_hidden_layers"] == 2
    assert d["overrides"]["hidden_size"] == 32


def test_run_cpu_bert_full_with_method_option(cli, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, stderr = cli("run", "-m", "bert-base", "--method", "lora", "-o", "r=4", "-b", "1", "-s", "8",
                               "--device", "cpu", *tiny_args("bert", layers=1), "--out", str(out))
    assert code == 0, stderr
    d = json.loads(out.read_text())
    assert d["method_options"]["r"] == 4 and d["device"] == "cpu" and d["loss"] is not None


def row_names(table_text: str) -> set[str]:
    """The first cell of every body row of the tables printed (what a row is called), whole."""
    return {line.split("│")[1].strip() for line in table_text.splitlines() if line.startswith("│")}


def test_list(cli):
    from membench import methods

    code, stdout, _ = cli("list")
    assert code == 0
    listed = row_names(stdout)
    # whole names: "gpt2" is not found in "gpt2-large", nor "full" in "full+ckpt" or "full fine-tuning"
    for name in ("bert-base", "bert-large", "roberta-base", "roberta-large", "bart-base", "bart-large",
                 "opt-125m", "opt-350m", "opt-1.3b", "opt-2.7b", "opt-6.7b", "gpt2", "gpt2-medium",
                 "gpt2-large", "llama-2-7b", "full", "lora"):
        assert name in listed, name
    assert set(methods.names(include_modifiers=True)) <= listed
    # the check can fail: without the `full` row, "full" is still in the text (ckpt's summary), not a name
    no_full = "\n".join(line for line in stdout.splitlines() if row_names(line) != {"full"})
    assert "full" in no_full and "full" not in row_names(no_full) and "lora" in row_names(no_full)


BAD = {
    "unknown model": (["--model", "opt-13b"], "unknown model 'opt-13b'; known models: bart-base"),
    "unknown method": (["--method", "qlora"], "unknown method 'qlora'; known methods: "),
    "zero batch": (["--batch-size", "0"], "batch size must be a positive integer"),
    "negative batch": (["-b", "-4"], "batch size must be a positive integer"),
    "float batch": (["--batch-size", "1.5"], "--batch-size"),
    "text batch": (["--batch-size", "eight"], "--batch-size"),
    "zero seq": (["--seq-len", "0"], "sequence length must be a positive integer"),
    "float seq": (["--seq-len", "3.5"], "--seq-len"),
    "seq too long": (["--seq-len", "4096"], "sequence length 4096 is longer than the model's 2048 positions"),
    "bad dtype": (["--dtype", "int8"], "unknown dtype 'int8'; allowed: fp32/float32"),
    "bad device": (["--device", "tpu"], "unknown device 'tpu'; allowed: cpu, fake, cuda"),
    "bad attn": (["--attn", "flash"], "unknown attention implementation 'flash'"),
    "override no =": (["--override", "num_hidden_layers"], "bad override 'num_hidden_layers': expected KEY=VALUE"),
    "override bad key": (["--override", "num_layers=3"], "unknown config key 'num_layers' for opt"),
    "override bad type": (["--override", "num_hidden_layers=two"], "expected an integer"),
    "override non-integer": (["--override", "num_hidden_layers=2.5"], "expected an integer"),
    "override non-positive": (["--override", "num_hidden_layers=0"], "must be a positive integer"),
    "override inconsistent": (["--override", "hidden_size=31"], "cannot build opt-125m with this config"),
    "bad method option": (["--method", "lora", "-o", "rank=4"], "method 'lora' has no option 'rank'"),
    "no model": (["--model", ""], "give --model NAME"),
    "snapshot off cuda": (["--device", "fake", "--snapshot", "s.pickle"], "--snapshot needs --device cuda"),
    "missing pretrained": (["--model", "", "--pretrained", "/no/such/folder"], "no such folder"),
    "lora rank zero": (["--method", "lora", "-o", "r=0"], "option lora.r=0: the rank must be a positive integer"),
    "lora rank negative": (["--method", "lora", "-o", "r=-1"], "option lora.r=-1: the rank must be"),
    # 2e9 sequences of 8 tokens, ids and labels: 238 GiB of inputs, on an 80 GiB GPU
    "inputs beyond the GPU": (["-b", "2000000000"], "the inputs alone (batch size 2000000000 x 8 tokens: 238.42 GiB) "
                                                    "exceed the a100-80gb's memory (80.00 GiB)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2(cli, case):
    args, message = BAD[case]
    base = ["run", "--model", "opt-125m", "-b", "1", "-s", "8", "--device", "fake"]
    # the tiny overrides come first so that the case's own --override is the one that is wrong
    code, stdout, stderr = cli(*base, *tiny_args(layers=1), *args)
    assert code == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in stdout + stderr


def test_cuda_without_gpu(cli, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, stderr = cli("run", "--model", "opt-125m", "--device", "cuda")
    assert code == 2
    assert stderr.strip() == "error: --device cuda: no CUDA GPU is visible here; use --device fake (no memory) or cpu"


def test_dtype_the_device_cannot_run(cli, monkeypatch):
    # a GPU without bf16 (V100, T4): refused before anything touches the device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-16GB")
    code, _, stderr = cli("run", "--model", "opt-125m", "--device", "cuda", "--dtype", "bf16")
    assert code == 2
    assert stderr.strip() == "error: this GPU (Tesla V100-SXM2-16GB) cannot run bf16; use fp16 or fp32"


def test_out_under_a_file_is_refused(cli, tmp_path):
    (tmp_path / "a-file").write_text("")
    code, _, stderr = cli("run", "--model", "opt-125m", "--out", str(tmp_path / "a-file" / "r.json"))
    assert code == 2 and stderr.startswith("error: --out") and len(stderr.strip().splitlines()) == 1
    assert "a-file is not a folder" in stderr


def _tiny_bert_checkpoint(folder):
    from transformers import AutoModelForSequenceClassification

    from membench import backbones
    from membench.backbones.tiny import tiny_overrides

    cfg = backbones.make_config(backbones.get("bert-base"), tiny_overrides("bert", layers=1))
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(folder)
    return folder


def test_a_named_model_with_a_checkpoint_is_refused_as_train_does(cli, tmp_path, capsys):
    out = tmp_path / "r.json"
    bert = _tiny_bert_checkpoint(tmp_path / "bert")
    capsys.readouterr()  # (transformers' saving bar)
    code, _, stderr = cli("run", "-m", "opt-125m", "--pretrained", str(bert), "-b", "1", "-s", "8", "--device", "cpu",
                          "--out", str(out))
    assert code == 2 and stderr.startswith("error: give --model NAME (random weights) or --pretrained PATH, not both")
    assert len(stderr.strip().splitlines()) == 1 and not out.exists()


def test_checkpointing_flag_on_a_ckpt_method_warns_and_runs_once(cli, tmp_path):
    out = tmp_path / "r.json"
    code, _, stderr = cli("run", "-m", "opt-125m", "--method", "lora+ckpt", "--checkpointing", "-b", "1", "-s", "8",
                          *tiny_args(layers=1), "--out", str(out))
    assert code == 0, stderr
    assert stderr.strip() == ("warning: --checkpointing: --method lora+ckpt already checkpoints every layer; "
                              "the flag adds nothing")
    assert json.loads(out.read_text())["method"] == "lora+ckpt"


def test_a_long_run_on_a_pipe_prints_plain_progress_lines(cli, monkeypatch):
    """Through a pipe (here: captured stderr) a run past the first seconds says what it does, line by line."""
    from membench.cli import format as fmt

    monkeypatch.setattr(fmt._PlainLines, "START_S", 0.0)
    code, _, stderr = cli("run", "-m", "opt-125m", "-b", "1", "-s", "8", *tiny_args(layers=2))
    assert code == 0, stderr
    lines = stderr.strip().splitlines()
    assert all(line.startswith("[") and "s] profiling: " in line for line in lines), stderr
    said = [line.split("s] profiling: ", 1)[1] for line in lines]
    assert said[0] == "building opt-125m (2 layers)" and "step 1/2 forward" in said and "step 2/2 optimizer step" in said


def test_list_model_without_verbose_warns(cli):
    code, out, stderr = cli("list", "-m", "opt-125m")
    assert code == 0 and "bert-base" in out
    assert stderr.strip() == ("warning: --model opt-125m only applies with --verbose (what each method trains on it); "
                              "ignored")
    code, _, stderr = cli("list", "-m", "opt-13b")
    assert code == 2 and "unknown model 'opt-13b'" in stderr
    code, out, stderr = cli("list", "--gpus", "--verbose")
    assert code == 0 and stderr.strip() == "warning: --gpus lists the GPUs and nothing else; --verbose ignored"


def _console_script() -> list[str]:
    exe = shutil.which("membench", path=os.path.dirname(sys.executable)) or shutil.which("membench")
    assert exe, "the membench console script is not installed"
    return [exe]


def test_console_script_subprocess(tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    ok = subprocess.run(_console_script() + ["run", "--model", "gpt2", "-b", "1", "-s", "8", "--device", "fake",
                                             *tiny_args("gpt2", layers=1), "--out", str(out)],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "layers.0" in ok.stdout
    assert json.loads(out.read_text())["model"] == "gpt2"
    bad = subprocess.run(_console_script() + ["run", "--model", "nope"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: unknown model 'nope'; known models:")
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_table_shows_cuda_figures_and_nvml_unavailable(capsys):
    """What `membench run --device cuda` prints, on a result with allocator figures and no NVML."""
    from membench import profile
    from membench.backbones.tiny import tiny
    from membench.cli.run import print_result

    model, ov = tiny("opt", layers=1)
    r = profile(model, "full", batch_size=1, seq_len=8, device="fake", overrides=ov)
    r.cuda = {"max_allocated_bytes": 3 * 2**30, "max_reserved_bytes": 4 * 2**30,
              "paper_activation_bytes": 2**30}
    r.nvml = {"available": False, "reason": "NVMLError_LibraryNotFound: NVML Shared Library Not Found"}
    print_result(r)
    out = capsys.readouterr().out
    assert "CUDA max allocated" in out and "3.00 GiB" in out and "1.00 GiB" in out
    assert "NVML device used (peak)" in out and "unavailable" in out


def test_run_pretrained_folder(cli, tmp_path):
    _tiny_bert_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "r.json"
    code, stdout, stderr = cli("run", "--pretrained", str(tmp_path / "ckpt"), "-b", "1", "-s", "8",
                               "--device", "cpu", "--out", str(out))
    assert code == 0, stderr
    d = json.loads(out.read_text())
    assert d["model"] == "ckpt" and d["provenance"]["pretrained"] == str(tmp_path / "ckpt")  # result.model_name
    assert [row["name"] for row in d["layers"]][:2] == ["embeddings", "layers.0"]
