"""What a backbone family tells the rest of membench.

A *family* (bert, opt, ...) is one small file that wraps transformers' own
modules: how to build the model for its task, where its layer stacks are, and
how one layer splits into an attention half and an FFN half:

    layer(h) == ffn_block(layer, attention_block(layer, h, *args, **kwargs))

Methods find everything they need here (the modules that play a role, such as the
attention's query projection, where LoRA goes; where adapters hook in; the blocks MEFT
makes reversible); profilers only need `groups()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

TINY_VOCAB = 1000  # the vocabulary of tiny models (Family.tiny)
LM_TASKS = ("causal-lm", "seq2seq-lm")  # the tasks whose head is a language-model head
ROLES = ("query", "key", "value", "ffn_down")  # what modules do, as methods target them (Family.roles)


@dataclass
class Family:
    """Base class; subclasses override the hooks below. Instances are stateless."""

    name: str = ""
    tiny_model: str = ""  # the shipped named model (configs/NAME.json) whose tiny version tests this family
    dropout_keys: tuple[str, ...] = ()  # the config's dropout probabilities (dropout_overrides)
    model_types: tuple[str, ...] = ()
    task: str = "classification"  # "classification" (2 labels), "causal-lm" or "seq2seq-lm"
    decoder: bool = False  # stacks run causal self-attention
    head_names: tuple[str, ...] = ("classifier", "score")  # a classification head's module names (peft's too)
    modality: str = "text"  # "text": token sequences (--seq-len); "image": patches of an image (--image-size)
    bias_switches: tuple[str, ...] = ()  # boolean config keys that give its models bias terms (Llama); (): they have them
    # The modules that play each of ROLES, by the suffix of their name in the installed transformers
    # (methods name the roles they target: LoRA "query", "value"): query, key, value (the attention's
    # projections; one fused module may play all three), ffn_down (the FFN's output projection, whose input
    # is the FFN activation). A family named two ways across transformers releases lists the newer name first.
    roles: ClassVar[dict[str, tuple[str, ...]]] = {}

    @property
    def language_model(self) -> bool:
        """The family's head is a language-model head (causal or sequence-to-sequence)."""
        return self.task in LM_TASKS

    # ---- config -----------------------------------------------------------
    def dropout_overrides(self, p: float = 0.0) -> dict[str, float]:
        """Config overrides setting every dropout probability of the model to `p` (0: dropout off, for
        tests that compare two runs exactly)."""
        return {key: p for key in self.dropout_keys}

    def tiny(self, layers: int = 2, hidden: int = 32, heads: int = 2) -> dict:
        """Config overrides for a tiny model of this family (same architecture, a few thousand
        parameters): tests, CI benchmarks, `--tiny` smoke runs. The FFN is 2 x hidden, the vocabulary 1000."""
        raise NotImplementedError(f"family {self.name!r} has no tiny configuration")

    def hidden_size(self, config) -> int:
        return config.hidden_size

    def activation(self, config) -> str:
        return getattr(config, "hidden_act", None) or getattr(config, "activation_function", "gelu")

    def max_positions(self, config) -> int:
        return config.max_position_embeddings

    def sequence_length(self, config) -> int | None:
        """The sequence length the model's input fixes (vision: patches + 1); None: the caller chooses."""
        return None

    def num_layers_key(self, config) -> tuple[str, ...]:
        return ("num_hidden_layers",)

    def module_names(self, roles: tuple[str, ...]) -> list[str]:
        """The name suffixes of the modules playing `roles` (`Family.roles`), without repeats: every role's
        first name, then every role's second (ViT: the newer transformers' names, then the earlier ones)."""
        names: list[str] = []
        for i in range(max((len(self.roles.get(role, ())) for role in roles), default=0)):
            for role in roles:
                named = self.roles.get(role, ())
                if i < len(named) and named[i] not in names:
                    names.append(named[i])
        return names

    def causal(self, stack: str) -> bool:
        """Whether the layers of `stack` (a key of `stacks()`) run causal self-attention."""
        return self.decoder

    def describe(self, config) -> dict[str, str]:
        """Layers, hidden size and positions as `membench list` shows them (BART: encoder+decoder layers;
        image models: the sequence an image makes, patches + 1, and its size)."""
        layers = "+".join(str(getattr(config, k)) for k in self.num_layers_key(config))
        seq = self.sequence_length(config)
        positions = f"{seq} ({config.image_size}px)" if seq is not None else str(self.max_positions(config))
        return {"layers": layers, "hidden": str(self.hidden_size(config)), "positions": positions}

    # ---- model ------------------------------------------------------------
    def build(self, config) -> nn.Module:
        return self._auto_class().from_config(config)

    def _auto_class(self):
        import transformers as tf

        if self.modality == "image":
            return tf.AutoModelForImageClassification
        return {"causal-lm": tf.AutoModelForCausalLM, "seq2seq-lm": tf.AutoModelForSeq2SeqLM,
                "classification": tf.AutoModelForSequenceClassification}[self.task]

    def load_pretrained(self, path: str, config) -> nn.Module:
        return self._auto_class().from_pretrained(path, config=config, local_files_only=True)

    def make_batch(self, config, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, Any]:
        """Random token ids (and labels) for one training step, on the CPU."""
        import torch

        low = 3 if config.vocab_size > 3 else 0
        ids = torch.randint(low, config.vocab_size, (batch_size, seq_len), generator=generator)
        if self.language_model:
            return {"input_ids": ids, "labels": ids.clone()}
        labels = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
        return {"input_ids": ids, "labels": labels}

    # ---- structure --------------------------------------------------------
    def stacks(self, model) -> dict[str, nn.ModuleList]:
        """Named layer stacks, bottom to top (BART: encoder then decoder)."""
        raise NotImplementedError

    def embeddings(self, model) -> list[nn.Module]:
        """Modules that turn ids into the first hidden state (reported as 'embeddings')."""
        return [model.get_input_embeddings()]

    def attn_out(self, layer) -> nn.Module:
        """The attention output projection (adapters 'after attention' hook here)."""
        raise NotImplementedError

    def ffn_in(self, layer) -> nn.Module:
        """The module whose input is the FFN sub-layer's input (parallel adapters read it)."""
        raise NotImplementedError

    def ffn_out(self, layer) -> nn.Module:
        """The module whose output is the FFN branch before its residual (adapters add here)."""
        raise NotImplementedError

    def attention_block(self, layer, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Attention sub-layer with its residual and LayerNorm; args/kwargs are what the HF stack passes the layer."""
        raise NotImplementedError

    def ffn_block(self, layer, hidden: torch.Tensor) -> torch.Tensor:
        """FFN sub-layer with its residual and LayerNorm."""
        raise NotImplementedError


@dataclass(frozen=True)
class Backbone:
    """A named model: a family plus its architecture values (shipped JSON)."""

    name: str
    family: Family
    config_values: dict = field(default_factory=dict)
