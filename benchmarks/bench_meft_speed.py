"""Step time of MEFT vs LoRA vs full fine-tuning on a small model, CPU.

    pytest benchmarks/bench_meft_speed.py -q            (prints MEFT / LoRA step-time ratios)

One training step = forward, loss, backward, AdamW step, dropout on, train mode.
The reversible backward recomputes each layer's forward once more, so in theory a
MEFT step costs about 4/3 of a plain one (forward 1 + backward 2 -> 1 + 1 + 2);
target: MEFT <= 1.5x LoRA's step time. Ratios are in each benchmark's extra_info.

On a shared machine, consecutive timings of one method after another drift with
the load; `test_ratio_interleaved` runs the five methods round-robin and
compares the fastest step of each (the least disturbed), which is the figure to
quote.
"""

from __future__ import annotations

import pytest

MODELS = {
    "bert": ("bert-base", dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                                vocab_size=1000)),
    "opt": ("opt-125m", dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024,
                             word_embed_proj_dim=256, vocab_size=1000)),
}
METHODS = ("full", "lora", "meft1", "meft2", "meft3")
BATCH, SEQ = 8, 128
_TIMES: dict[tuple[str, str], float] = {}


def _setup(family: str, method: str):
    import torch

    from membench.runner import build, build_device

    name, overrides = MODELS[family]
    torch.manual_seed(0)
    with build_device("cpu"):
        _base, model, fam, config, _cfg = build(name, method, dtype="fp32", device="cpu", overrides=overrides)
    model.train()
    batch = fam.make_batch(config, BATCH, SEQ, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", sorted(MODELS))
def test_step_time(benchmark, family, method):
    step = _setup(family, method)
    step()  # warm-up (allocations, lazy inits)
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    _TIMES[(family, method)] = median
    benchmark.extra_info["median_s"] = median
    lora = _TIMES.get((family, "lora"))
    if method.startswith("meft") and lora:
        ratio = median / lora
        benchmark.extra_info["ratio_to_lora"] = ratio
        verdict = "ok" if ratio <= 1.5 else "ABOVE the 1.5x target"
        print(f"\n{family} {method}: {median * 1e3:.1f} ms/step = {ratio:.2f}x LoRA "
              f"({lora * 1e3:.1f} ms), {median / _TIMES[(family, 'full')]:.2f}x full -> {verdict}")


@pytest.mark.parametrize("family", sorted(MODELS))
def test_ratio_interleaved(benchmark, family):
    """Round-robin over the methods, best of N steps each: MEFT / LoRA and MEFT / full ratios."""
    import time

    steps = {m: _setup(family, m) for m in METHODS}
    best = {m: float("inf") for m in METHODS}

    def rounds(n=5):
        for _ in range(n):
            for m, step in steps.items():
                t0 = time.perf_counter()
                step()
                best[m] = min(best[m], time.perf_counter() - t0)

    for step in steps.values():
        step()  # warm-up
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    lines = [f"{family}: best step " + ", ".join(f"{m} {best[m] * 1e3:.0f} ms" for m in METHODS)]
    for m in METHODS:
        if m.startswith("meft"):
            ratio = best[m] / best["lora"]
            benchmark.extra_info[f"{m}_ratio_to_lora"] = ratio
            benchmark.extra_info[f"{m}_ratio_to_full"] = best[m] / best["full"]
            lines.append(f"  {m}: {ratio:.2f}x LoRA, {best[m] / best['full']:.2f}x full"
                         + ("" if ratio <= 1.5 else "  (above the 1.5x target)"))
    print("\n" + "\n".join(lines))
