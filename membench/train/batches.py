"""The batches of a training run: tokenized examples, padded batches, the epoch's order, the LR schedule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def tokenize(tokenizer, texts: list, max_length: int) -> list[dict[str, list[int]]]:
    if texts and isinstance(texts[0], tuple):
        enc = tokenizer([a for a, _ in texts], [b for _, b in texts], truncation=True, max_length=max_length)
    else:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def collate(items: list[dict[str, list[int]]], labels: list[int] | None, pad_id: int, device) -> dict[str, Any]:
    import torch

    width = max(len(it["input_ids"]) for it in items)
    batch = {}
    for key in items[0]:
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([it[key] + [fill] * (width - len(it[key])) for it in items], dtype=torch.long,
                                  device=device)
    if "attention_mask" not in batch:
        batch["attention_mask"] = torch.tensor([[1] * len(it["input_ids"]) + [0] * (width - len(it["input_ids"]))
                                                for it in items], dtype=torch.long, device=device)
    if labels is not None:
        batch["labels"] = torch.tensor(labels, dtype=torch.long, device=device)
    return batch


def batch_order(lengths: list[int], batch_size: int, generator, group_by_length: bool = True) -> list[list[int]]:
    """One epoch's batches: a seeded permutation; with grouping, each run of 50 batches is sorted by
    length before it is cut into batches, and the batches are shuffled again (as HF's group_by_length)."""
    import torch

    n = len(lengths)
    perm = torch.randperm(n, generator=generator).tolist()
    if not group_by_length:
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    mega = 50 * batch_size
    batches = []
    for start in range(0, n, mega):
        chunk = sorted(perm[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor: linear warmup from 0 over `warmup` steps, then linear decay to 0 at `total`."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor
