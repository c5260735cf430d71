"""A sweep's input checked before any run (exit 2, nothing stored): sequences a model cannot take, methods its
family refuses, the image-size axis, default axes, experiment-file lines, --ray-address, --config a folder."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from membench.errors import UserError
from membench.sweep import Grid, RunSpec
from membench.sweep import experiment as xp

from .test_sweep_grid import GOOD

ISSUE_GRID = ["--models", "bert-base,vit-base", "--methods", "full,meft3+chunkloss", "--seq-lens", "128,1024",
              "--batch-sizes", "1", "--tiny", "--device", "fake"]


@pytest.mark.parametrize("dry_run", [True, False])
def test_runs_the_model_configs_rule_out_are_refused_before_any_run(tmp_path, cli, dry_run):
    db = tmp_path / "r.db"
    code, out, err = cli("sweep", *ISSUE_GRID, "--db", str(db), *(["--dry-run"] if dry_run else []),
                         "--no-progress")
    assert code == 2 and not out, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert "--seq-lens: 1024 is longer than bert-base's 512 positions" in err
    assert ("--methods: meft3+chunkloss on bert-base: +chunkloss replaces a language-model head; bert models here "
            "have a classification head") in err
    assert "vit-base" in err.replace("on bert-base", "")  # the image model is refused +chunkloss too
    assert not db.exists()  # nothing ran, nothing was stored


def test_an_image_model_is_given_image_sizes_not_seq_lens(tmp_path, cli):
    db = str(tmp_path / "r.db")
    code, _out, err = cli("sweep", "--models", "vit-base", "--methods", "full", "--seq-lens", "128", "--dry-run",
                          "--db", db)
    assert code == 2 and "--seq-lens: vit-base is an image model" in err and "set --image-sizes" in err
    code, _out, err = cli("sweep", "--models", "bert-base", "--methods", "full", "--image-sizes", "224",
                          "--dry-run", "--db", db)
    assert code == 2 and "--image-sizes: image sizes apply to image models; bert-base reads text" in err
    code, _out, err = cli("sweep", "--models", "vit-base", "--methods", "full", "--image-sizes", "224,200",
                          "--dry-run", "--db", db)
    assert code == 2 and "--image-sizes: 200 is not a multiple of vit-base's patch size 16" in err
    code, out, err = cli("sweep", "--models", "bert-base,vit-base", "--methods", "full", "--seq-lens", "128",
                         "--image-sizes", "224,384", "--batch-sizes", "1", "--dry-run", "--db", db)
    assert code == 0, err
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    assert [(r[0], r[3]) for r in rows] == [("bert-base", "128"), ("vit-base", "224px"), ("vit-base", "384px")]


def test_grid_image_models_along_image_sizes_text_models_along_seq_lens():
    specs = Grid(models=["bert-base", "vit-base"], methods=["full"], seq_lens=[64, 128], image_sizes=[224, 384],
                 batch_sizes=[1], dtypes=["fp32"]).expand()
    assert [(s.model, s.seq_len, s.image_size) for s in specs] == [
        ("bert-base", 64, None), ("bert-base", 128, None), ("vit-base", None, 224), ("vit-base", None, 384)]
    assert [s.label for s in specs][2:] == ["vit-base full b1 224px fp32", "vit-base full b1 384px fp32"]
    own = Grid(models=["vit-base"], methods=["full"], batch_sizes=[1, 2]).expand()  # no sizes: the model's own
    assert [(s.seq_len, s.image_size, s.seq_label) for s in own] == [(None, None, "image")] * 2
    assert Grid(models=["bert-base", "vit-base"], image_sizes=[224, 384]).size == 3 * 3 + 2 * 3 * 3
    # a text run keeps the key it had before runs had an image size: stored sweeps resume
    text = RunSpec("opt-125m", "lora", 4, 128, "bf16", "fake")
    old = {k: v for k, v in text.to_dict().items() if k not in ("image_size", "context", "grad_accum", "precision", "quant",
                                                        "quant_double_quant", "quant_blocksize", "quant_compute_dtype",
                                                        "kbit_ckpt")}  # fields added later
    from membench import __version__

    blob = json.dumps({"spec": old, "membench": __version__}, sort_keys=True, separators=(",", ":"))
    assert text.key() == hashlib.sha256(blob.encode()).hexdigest()[:32]
    assert RunSpec("vit-base", "full", 1, None, "fp32", "fake", image_size=224).key() != \
        RunSpec("vit-base", "full", 1, None, "fp32", "fake").key()


def test_an_image_size_reaches_the_run():
    from membench.sweep.worker import execute

    spec = RunSpec("vit-base", "full", 1, None, "fp32", "fake", tiny=True, image_size=32)  # tiny: 4 x 4 patches
    record = execute(spec.to_dict())
    assert record.status == "ok", record.error
    assert record.result.seq_len == (32 // 4) ** 2 + 1


def test_the_preflight_checks_each_run_on_its_built_model():
    from membench.sweep.worker import preflight

    specs = [RunSpec("bert-base", "full", 1, 1024, "fp32", "fake", tiny=True),
             RunSpec("vit-base", "full", 1, 128, "fp32", "fake", tiny=True),  # a hand-made spec: no grid makes it
             RunSpec("vit-base", "full", 1, None, "fp32", "fake", tiny=True, image_size=18),
             RunSpec("bert-base", "meft3+chunkloss", 1, 16, "fp32", "fake", tiny=True),
             RunSpec("opt-125m", "lora", 1, 16, "fp32", "fake", tiny=True, method_options={"target_modules": ["x"]}),
             RunSpec("opt-125m", "lora+chunkloss", 1, 16, "fp32", "fake", tiny=True)]  # fine
    problems = [p["message"] for p in preflight([s.to_dict() for s in specs])]
    assert problems == [
        "--seq-lens 1024 is longer than bert-base's 512 positions",
        "vit-base is an image model: every layer sees (image_size / patch_size)^2 + 1 = 17 tokens; set "
        "--image-sizes (now 16), not --seq-lens",
        "vit-base: --image-sizes 18 is not a multiple of the patch size 4",
        "meft3+chunkloss on bert-base: +chunkloss replaces a language-model head; bert models here have a "
        "classification head",
        "lora on opt-125m: cannot be built: NoMatchingPeftModuleError: Target modules {'x'} not found in the base "
        "model. Please check the target modules and try again."]


def test_every_axis_has_a_default_flags_over_file_over_defaults(tmp_path, cli):
    exp = xp.resolve(None, device="fake")
    assert {(s.model, s.method, s.seq_len, s.batch_size, s.dtype) for s in exp.specs} == {
        ("opt-125m", m, 512, b, "fp32") for m in ("full", "lora", "meft3") for b in (1, 4, 16)}
    f = tmp_path / "exp.toml"
    f.write_text('models = ["gpt2"]\nbatch_sizes = [2]\n')
    exp = xp.resolve(f, batch_sizes=[8], device="fake")
    assert {(s.model, s.method, s.batch_size) for s in exp.specs} == {("gpt2", m, 8) for m in ("full", "lora", "meft3")}
    code, out, err = cli("sweep", "--help")
    assert code == 0, err
    text = " ".join(out.replace("│", " ").split())
    for shown in ("(default opt-125m)", "(default full,lora,meft3)", "(default 512)", "(default 1,4,16)",
                  "(default fp32)", "(default: each model's own)"):
        assert shown in text


def test_a_bad_value_in_an_experiment_file_names_the_file_and_line(tmp_path, cli):
    f = tmp_path / "exp.toml"
    cases = [(GOOD.replace("batch_sizes = [1, 2]", "batch_sizes = [1, -4]"), "exp.toml:6: key 'batch_sizes': -4 is not "
              "a positive integer"),
             (GOOD.replace("batch_sizes = [1, 2]", "batch_sizes = [1, 1]"), "exp.toml:6: key 'batch_sizes': duplicate"),
             (GOOD.replace("batch_sizes = [1, 2]", "batch_sizes = []"), "exp.toml:6: key 'batch_sizes': empty grid"),
             (GOOD.replace('models = ["opt-125m"]', 'models = ["bert-base"]').replace("seq_lens = [16, 32]",
                                                                                      "seq_lens = [16, 4096]"),
              "exp.toml:5: key 'seq_lens': 4096 is longer than bert-base's 512 positions"),
             (GOOD.replace('dtypes = ["fp32"]', 'dtypes = ["fp8"]'), "exp.toml:7: key 'dtypes': unknown dtype"),
             (GOOD.replace('device = "fake"', 'device = "tpu"'), "exp.toml:8: key 'device': unknown device"),
             (GOOD.replace("timeout = 60", "timeout = -1"), "exp.toml:11: key 'timeout': must be positive"),
             (GOOD.replace('early_stop = "batch_size"', 'early_stop = "heads"'), "exp.toml:10: key 'early_stop': "
              "unknown early-stop axis"),
             (GOOD.replace("timeout = 60", 'timeout = 60\nexecutor = "slurm"'), "exp.toml:12: key 'executor': "
              "unknown executor 'slurm'")]
    for text, match in cases:
        f.write_text(text)
        code, _out, err = cli("sweep", "--config", str(f), "--dry-run", "--db", str(tmp_path / "x.db"))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{tmp_path / match}" in err or f"{f.parent / match}" in err, (match, err)
    f.write_text(GOOD.replace("batch_sizes = [1, 2]", "batch_sizes = [1, -4]"))
    code, _out, err = cli("sweep", "--config", str(f), "--batch-sizes", "0", "--dry-run")
    assert code == 2 and "--batch-sizes: 0 is not a positive integer" in err  # the flag's value: the flag named
    assert not (tmp_path / "x.db").exists()


def test_config_a_folder_names_it(tmp_path, cli):
    code, _out, err = cli("sweep", "--config", str(tmp_path), "--dry-run")
    assert code == 2 and err.strip() == (f"error: --config {tmp_path}: is a folder; give an experiment file (TOML), "
                                         f"e.g. {tmp_path / 'experiments.toml'}")
    code, _out, err = cli("sweep", "--config", str(tmp_path / "nope.toml"), "--dry-run")
    assert code == 2 and "nope.toml: experiment file does not exist" in err


def test_a_ray_address_needs_the_ray_executor(tmp_path, cli):
    db = str(tmp_path / "x.db")
    grid = ["--models", "opt-125m", "--methods", "full", "--seq-lens", "16", "--batch-sizes", "1", "--device", "fake"]
    code, _out, err = cli("sweep", *grid, "--ray-address", "ray://head:10001", "--db", db)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--ray-address: a Ray address is for --executor ray, and this sweep's executor is 'local'" in err
    f = tmp_path / "exp.toml"
    f.write_text(GOOD.replace("timeout = 60", 'timeout = 60\nray_address = "auto"'))
    code, _out, err = cli("sweep", "--config", str(f), "--dry-run", "--db", db)
    assert code == 2 and f"{f}:12: key 'ray_address': a Ray address is for --executor ray" in err
    f.write_text(GOOD.replace("timeout = 60", 'timeout = 60\nexecutor = "ray"\nray_address = "auto"'))  # a cluster's
    # file, run on this machine once: the flag picks the executor, the file's address is let go
    exp = xp.resolve(f, executor="local")
    assert (exp.executor, exp.ray_address) == ("local", None)
    assert not Path(db).exists()


def test_unknown_model_from_a_file_names_its_line(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text(GOOD.replace('models = ["opt-125m"]', 'models = ["opt-9000"]'))
    with pytest.raises(UserError, match=r"exp.toml:3: key 'models': unknown model 'opt-9000'"):
        xp.resolve(f)


def test_dry_run_imports_no_torch(tmp_path):
    import subprocess

    code = ("import sys; from membench.cli import main\n"
            "try:\n    main(['sweep', '--models', 'bert-base,vit-base', '--dry-run', '--db', sys.argv[1]])\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.db")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_early_stop_along_seq_len_follows_an_image_models_image_size():
    from collections import deque

    from membench.sweep.driver import _EarlyStop

    specs = Grid(models=["vit-base"], methods=["full"], image_sizes=[224, 384, 448], batch_sizes=[1]).expand()
    stop = _EarlyStop("seq_len")
    stop.saw(specs[1], "oom")  # 384 px ran out of memory: 448 px is a longer sequence
    assert [stop.skips(s) for s in specs] == [None, None, 384]
    assert stop.next_ready(deque(specs[2:]), [specs[1]]) is None  # waits for the smaller image in flight
    own = Grid(models=["vit-base"], methods=["full"], batch_sizes=[1]).expand()[0]  # its own size: no axis value
    stop.saw(own, "oom")
    assert stop.skips(own) is None and stop.next_ready(deque([own]), specs) == own
