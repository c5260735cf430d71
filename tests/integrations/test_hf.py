"""The Trainer callback (membench.integrations.hf): one real step of a user's Trainer run, profiled on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from membench import profile_module
from membench.backbones.tiny import FAMILY_MODELS, tiny_overrides
from membench.runner import build
from membench.spec import RunSpec

transformers = pytest.importorskip("transformers")


def _model():
    torch.manual_seed(0)
    return build(RunSpec(model=FAMILY_MODELS["bert"], method="full", device="cpu",
                         overrides=tiny_overrides("bert", layers=2)), inputs=False).model


class _Data(torch.utils.data.Dataset):
    """Eight examples of one shape (every batch saves the same bytes)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"input_ids": torch.randint(0, 1000, (16,), generator=g), "attention_mask": torch.ones(16, dtype=torch.long),
                "labels": torch.tensor(i % 2)}


@pytest.mark.parametrize("bf16", [False, True])
def test_the_callback_profiles_a_step_as_profile_module_does(tmp_path, bf16):
    from membench.integrations.hf import MembenchCallback

    out = tmp_path / "step.json"
    callback = MembenchCallback(out, db=tmp_path / "runs.db", name="tiny-bert")
    model = _model()
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                                          report_to=[], use_cpu=True, bf16=bf16, logging_strategy="no",
                                          save_strategy="no", gradient_accumulation_steps=2 if bf16 else 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Data(), callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step == 2
    result = callback.result
    data = json.loads(out.read_text())
    assert data["model"] == "tiny-bert" and data["precision"] == ("bf16-mixed" if bf16 else "32-true")
    assert result.grad_accum == (2 if bf16 else 1)

    # the same model (the weights do not change what is saved) and a batch of the same shape, profiled directly
    reference = _model()
    reference.load_state_dict(before)
    batch = torch.utils.data.default_collate([_Data()[i] for i in range(2)])
    if bf16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            direct = profile_module(reference, batch, device="cpu")
    else:
        direct = profile_module(reference, batch, device="cpu")
    assert result.layer_bytes == direct.layer_bytes
    assert result.activation_bytes == direct.activation_bytes > 0

    from membench import results

    assert list(results.load(tmp_path / "runs.db")["model"]) == ["tiny-bert"]


def test_the_callback_leaves_training_as_it_was(tmp_path):
    """The profiled step is undone: the weights after training equal a run without the callback."""
    from membench.integrations.hf import MembenchCallback

    def train(callbacks):
        model = _model()
        args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                                              report_to=[], use_cpu=True, logging_strategy="no", save_strategy="no",
                                              seed=0)
        transformers.Trainer(model=model, args=args, train_dataset=_Data(), callbacks=callbacks).train()
        return model.state_dict()

    plain, profiled = train([]), train([MembenchCallback(None)])
    assert all(torch.equal(plain[k], profiled[k]) for k in plain)


def test_the_callback_profiles_and_restores_a_qlora_model(tmp_path):
    """A QLoRA Trainer run (a 4-bit base: bitsandbytes' quant state is not a plain state_dict's): the step is
    profiled, its base named, and the weights after training equal a run without the callback."""
    pytest.importorskip("bitsandbytes")
    from membench.backbones.tiny import tiny
    from membench.integrations.hf import MembenchCallback

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "attention_mask": torch.ones(16, dtype=torch.long), "labels": ids}

    def train(callbacks):
        name, ov = tiny("llama")
        torch.manual_seed(0)
        model = build(RunSpec(model=name, overrides=ov, method="lora", device="cpu", dtype="bf16", quant="nf4",
                              quant_double_quant=True, kbit_ckpt=False), inputs=False).model
        args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                                              report_to=[], use_cpu=True, logging_strategy="no", save_strategy="no",
                                              seed=0)
        transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=callbacks).train()
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    callback = MembenchCallback(None)
    plain, profiled = train([]), train([callback])
    assert callback.result.quant == "nf4+dq" and callback.result.activation_bytes > 0
    assert plain.keys() == profiled.keys()
    assert all(plain[k].dtype == profiled[k].dtype and torch.equal(plain[k], profiled[k]) for k in plain)
