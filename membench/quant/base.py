"""A quantized base, built as transformers and peft build one for QLoRA.

    model (nn.Linear weights, the run's dtype)
      ── BitsAndBytesConfig's quantizer: which nn.Linear layers convert (its skips: the output embedding,
         tied and last modules, the model's _keep_in_fp32_modules)
      ── transformers' replace_with_bnb_linear: each becomes bnb Linear4bit / Linear8bitLt
      ── each weight quantized by bitsandbytes itself (Params4bit / Int8Params._quantize): on the CPU for real
         runs, on `meta` for fake ones (bitsandbytes' fake kernels give the packed shapes; backends.fakeify
         then makes them fake, quant state included)
      ── peft.prepare_model_for_kbit_training: everything frozen, fp16/bf16 parameters that are not 4-bit
         cast to fp32, gradient checkpointing (non-reentrant) unless Quant.checkpointing is off
      ── then the method (LoRA on a Linear4bit: peft's bnb LoRA layer)
"""

from __future__ import annotations

from ..bnb import import_bitsandbytes
from ..errors import UserError
from . import Quant


def bnb_config(quant: Quant):
    """The BitsAndBytesConfig a user would write for `quant` (its defaults otherwise)."""
    import torch
    from transformers import BitsAndBytesConfig

    from .. import dtypes

    if not quant.four_bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.kind,
                              bnb_4bit_use_double_quant=quant.double_quant,
                              bnb_4bit_compute_dtype=dtypes.to_torch(quant.compute), bnb_4bit_quant_storage=torch.uint8)


def quantize(model, quant: Quant, skip=()):
    """Replace the base's frozen nn.Linear layers as transformers does, quantize their weights where they are
    (cpu: real, meta: shapes), and prepare the model for k-bit training as peft does. Returns the model.
    `skip`: module names left unquantized besides transformers' own skips (a classifier's new head, as a user
    passes it in llm_int8_skip_modules: it trains)."""
    import torch

    bnb = import_bitsandbytes()  # first: peft and transformers import it too, and it must not reach the network
    from peft import prepare_model_for_kbit_training
    from transformers.integrations import replace_with_bnb_linear
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.auto import AutoHfQuantizer

    _dynamic_map(bnb)
    config = bnb_config(quant)
    quantizer = AutoHfQuantizer.from_config(config, pre_quantized=False)
    skip = quantizer.get_modules_to_not_convert(model, list(skip) or config.llm_int8_skip_modules,
                                                getattr(model, "_keep_in_fp32_modules", None), add_default_skips=True)
    originals = {name: m for name, m in model.named_modules() if isinstance(m, Conv1D) or type(m) is torch.nn.Linear}
    replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=config)
    converted = 0
    for name, m in model.named_modules():
        if not isinstance(m, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt) or name not in originals:
            continue
        old = originals[name]
        weight = old.weight.data.t() if isinstance(old, Conv1D) else old.weight.data  # Conv1D keeps [in, out]
        if isinstance(m, bnb.nn.Linear4bit):
            m.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=quant.kind, blocksize=quant.blocksize,
                                         compress_statistics=quant.double_quant, quant_storage=torch.uint8,
                                         module=m)._quantize(weight.device)
        else:
            m.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)._quantize(weight.device)
        if old.bias is not None:
            m.bias = torch.nn.Parameter(old.bias.data, requires_grad=False)
        converted += 1
    if not converted:
        raise UserError("--quant: the model has no nn.Linear layer that bitsandbytes quantizes")
    setattr(model, "is_loaded_in_4bit" if quant.four_bit else "is_loaded_in_8bit", True)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=quant.checkpointing)


def _dynamic_map(bnb) -> None:
    """bitsandbytes caches its 8-bit 'dynamic' code on the device of its first use; made here on the CPU (under
    fake tensors its construction fails: it reads values), so a meta or fake first use finds it."""
    import torch

    qmaps = bnb.functional.name2qmap
    if "dynamic" not in qmaps or qmaps["dynamic"].device.type != "cpu":
        with torch.device("cpu"):  # (a fake build runs under torch.device("meta"))
            qmaps["dynamic"] = bnb.functional.create_dynamic_map()


def quantized_parameters(model) -> list:
    """(name, parameter) of the model's quantized (integer) weights: what no method can train."""
    return [(n, p) for n, p in model.named_parameters() if not (p.is_floating_point() or p.is_complex())]


def refuse_training_quantized(model, which, method: str) -> None:
    """A method that would train a quantized weight: one line naming it (full fine-tuning, or anything that
    trains the converted layers' weights)."""
    hit = next((n for n, p in quantized_parameters(model) if which(n, p)), None)
    if hit is not None:
        raise UserError(f"{method} would train the quantized weight {hit}; a quantized base stays frozen (train "
                        "adapters on it: lora, ia3, prefix, houlsby, ...; or drop --quant)", field=("method",))


def label_of_model(model) -> str:
    """The quantized base a model has (Quant.label: nf4+dq, int8), read from its bitsandbytes weights; "" for none
    (a Trainer's model the callbacks profile: the run says what it trained on)."""
    from . import DEFAULT_BLOCKSIZE

    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        if state is not None:
            blocksize = getattr(state, "blocksize", DEFAULT_BLOCKSIZE)
            return Quant(state.quant_type, bool(getattr(state, "nested", False)), blocksize).label
        if getattr(p, "SCB", None) is not None or str(p.dtype) == "torch.int8":
            return "int8"
    return ""
