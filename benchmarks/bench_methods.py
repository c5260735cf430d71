"""Regression suites: every registered method on tiny and small configs, memory and step time.

    pytest benchmarks/bench_methods.py --benchmark-json current.json
    membench bench-compare benchmarks/baselines/methods.json current.json

One benchmark per (family, size, method, device), e.g. `test_method[opt-small-lora-cpu]`:

- memory figures (`benchmark.extra_info`): activation_bytes, peak_activation_bytes,
  per-layer bytes (`layer_bytes`, `layer_recompute_bytes`), parameters, gradients,
  optimizer state... from `membench.profile` on that device. They are exact
  and deterministic on `fake` and `cpu` for given torch/transformers versions,
  and `membench bench-compare` gates them to the byte.
- time (pytest-benchmark's stats): on `cpu`/`cuda`, one real training step
  (forward, loss, backward, AdamW) of the method's model without profilers; on
  `fake`, one whole `membench.profile(device="fake")` call (what a user waits
  for when estimating without a GPU).

Methods come from `membench.methods.names()` at collection time (plugins from
MEMBENCH_PLUGINS included), plus `full` and `lora` with every modifier, so a
newly registered method is benchmarked without editing this file. A method
that rejects a family (UserError) is skipped for it.
"""

from __future__ import annotations

import pytest

# the families benchmarked: each one's tiny model (membench.backbones.tiny: Family.tiny_model, shrunk)
FAMILIES = ("opt", "bert")
CONFIGS = {
    "tiny": {"shape": {"layers": 2, "hidden": 32, "heads": 2}, "batch_size": 2, "seq_len": 16},
    "small": {"shape": {"layers": 4, "hidden": 64, "heads": 4}, "batch_size": 4, "seq_len": 64},
}
DEVICES = ("fake", "cpu")
MODIFIER_BASES = ("full", "lora")
DTYPE = "fp32"


def method_specs() -> list[str]:
    from membench import methods

    specs = list(methods.names())
    for mod in methods.modifier_names():
        specs += [f"{base}+{mod}" for base in MODIFIER_BASES if base in specs]
    return specs


def _pick(option: str, allowed: list[str], what: str) -> list[str]:
    if not option:
        return list(allowed)
    wanted = [v.strip() for v in option.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in allowed]
    if unknown:
        raise pytest.UsageError(f"--bench-{what}: unknown {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return wanted


def pytest_generate_tests(metafunc):
    if "recipe_case" in metafunc.fixturenames:
        metafunc.parametrize("recipe_case", _recipe_cases(metafunc.config))
        return
    if "case" not in metafunc.fixturenames:
        return
    opt = metafunc.config.getoption
    specs = method_specs()
    methods = specs if not opt("bench_methods") else [m.strip() for m in opt("bench_methods").split(",") if m.strip()]
    if opt("bench_methods"):
        from membench import methods as registry
        from membench.errors import UserError

        for spec in methods:
            try:
                registry.resolve(spec)
            except UserError as exc:
                raise pytest.UsageError(f"--bench-methods: {exc}") from None
    families = _pick(opt("bench_models"), list(FAMILIES), "models")
    configs = _pick(opt("bench_configs"), list(CONFIGS), "configs")
    devices = _pick(opt("bench_devices"), [*DEVICES, "cuda"], "devices") if opt("bench_devices") else list(DEVICES)
    cases = [
        pytest.param((family, config, method, device), id=f"{family}-{config}-{method}-{device}",
                     marks=[pytest.mark.gpu] if device == "cuda" else [])
        for family in families for config in configs for method in methods for device in devices
    ]
    metafunc.parametrize("case", cases)


def profile_kwargs(family: str, config: str, device: str) -> dict:
    from membench.backbones.tiny import tiny_overrides

    c = CONFIGS[config]
    return dict(batch_size=c["batch_size"], seq_len=c["seq_len"], dtype=DTYPE, device=device,
                overrides=tiny_overrides(family, **c["shape"]))


def memory_info(result) -> dict:
    """The figures `membench bench-compare` gates: every `*_bytes` int and every `*_bytes` dict entry."""
    info = {
        "model": result.model, "method": result.method, "device": result.device, "dtype": result.dtype,
        "batch_size": result.batch_size, "seq_len": result.seq_len, "overrides": dict(result.overrides),
        "num_params": result.num_params, "num_trainable_params": result.num_trainable_params,
        "peak_phase": result.peak_phase,
    }
    for key in ("activation_bytes", "peak_activation_bytes", "recompute_bytes", "estimated_peak_bytes",
                "param_bytes", "trainable_param_bytes", "grad_bytes", "optimizer_bytes", "buffer_bytes",
                "input_bytes", "weight_copy_bytes"):
        info[key] = int(getattr(result, key))
    info["layer_bytes"] = {row.name: int(row.activation_bytes) for row in result.layers}
    info["layer_recompute_bytes"] = {row.name: int(row.recompute_bytes) for row in result.layers}
    info["peak_by_phase_bytes"] = {k: int(v) for k, v in result.peak_by_phase.items()}
    if result.cuda:
        info["cuda_bytes"] = {k: int(v) for k, v in result.cuda.items()
                              if k.endswith("_bytes") and isinstance(v, int) and not isinstance(v, bool)}
    if result.predicted_cuda is not None:  # fake tensors, CUDA target: the allocator model's figures, per phase
        p = result.predicted_cuda
        info["predicted_cuda_bytes"] = {"max_allocated_bytes": p.max_allocated_bytes,
                                        "max_reserved_bytes": p.max_reserved_bytes,
                                        "allocated_after_step_bytes": p.allocated_after_step_bytes,
                                        "cublas_workspace_bytes": p.cublas_workspace_bytes}
        info["predicted_cuda_bytes"].update({f"{name}.max_allocated_bytes": int(v["max_allocated_bytes"])
                                             for name, v in p.phases.items()})
    return info


def training_step(model_name: str, method: str, kw: dict):
    """A closure running one plain training step (forward, loss, backward, AdamW) with no profiler."""
    import torch

    from membench.profilers.step import default_loss
    from membench.runner import build
    from membench.spec import RunSpec

    device = kw["device"]
    torch.manual_seed(0)
    built = build(RunSpec(model=model_name, method=method, dtype=kw["dtype"], device=device, overrides=kw["overrides"]),
                  inputs=False)
    model, family, config = built.model, built.family, built.config
    batch = family.make_batch(config, kw["batch_size"], kw["seq_len"], torch.Generator().manual_seed(0))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = default_loss(model(**batch))
        loss.backward()
        opt.step()
        sync()

    return step


def test_method(benchmark, case, request):
    import membench
    from membench.errors import UserError

    family, config, method, device = case
    from membench.backbones.tiny import FAMILY_MODELS

    model = FAMILY_MODELS[family]
    kw = profile_kwargs(family, config, device)
    benchmark.group = f"{config} {device}"

    def timed(fn, *args, **kwargs):
        if request.config.getoption("bench_quick"):
            # one call, no calibration: for the CI memory gate, where time is not compared
            return benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=1, iterations=1, warmup_rounds=0)
        return benchmark(fn, *args, **kwargs)

    try:
        if device == "fake":
            result = timed(membench.profile, model, method, **kw)
        else:
            result = membench.profile(model, method, **kw)
            timed(training_step(model, method, kw))
    except UserError as exc:
        pytest.skip(f"{method} on {family}: {exc}")
    # mutate, never rebind: pytest-benchmark keeps a reference to this dict
    benchmark.extra_info.update(memory_info(result))
    benchmark.extra_info.update(family=family, config=config)
    assert result.activation_bytes > 0


# ---- the recipes people train with: precisions, optimizers, gradient accumulation (issue 20) --------------------
# (precision, optimizer, gradient accumulation), on the tiny configs of `full` and `lora`; paged optimizers need a
# CUDA target (fake only)
RECIPES = (("bf16-mixed", "adamw", 1), ("16-mixed", "adamw", 1), ("bf16-true", "adamw", 1),
           ("32-true", "adafactor", 1), ("32-true", "adamw-8bit", 1), ("32-true", "paged-adamw-8bit", 1),
           ("32-true", "sgd-momentum", 1), ("32-true", "adamw", 2), ("bf16-mixed", "adamw-8bit", 2))
RECIPE_METHODS = ("full", "lora")


def _recipe_cases(config) -> list:
    opt = config.getoption
    families = _pick(opt("bench_models"), list(FAMILIES), "models")
    devices = _pick(opt("bench_devices"), [*DEVICES, "cuda"], "devices") if opt("bench_devices") else list(DEVICES)
    if opt("bench_methods"):  # a run narrowed to some method specs (bench-compare --allow-missing) has no recipes
        return []
    methods = list(RECIPE_METHODS)
    return [pytest.param((family, method, recipe, device),
                         id=f"{family}-tiny-{method}-{recipe[0]}-{recipe[1]}" + (f"-x{recipe[2]}" if recipe[2] > 1
                                                                                 else "") + f"-{device}",
                         marks=[pytest.mark.gpu] if device == "cuda" else [])
            for family in families for method in methods for recipe in RECIPES for device in devices
            if not (recipe[1].startswith("paged") and device == "cpu")]


def test_recipe(benchmark, recipe_case, request):
    import membench

    family, method, (precision, optimizer, accum), device = recipe_case
    from membench.backbones.tiny import FAMILY_MODELS

    kw = {**profile_kwargs(family, "tiny", device), "dtype": None, "precision": precision, "optimizer": optimizer,
          "grad_accum": accum}
    benchmark.group = f"recipes {device}"
    result = benchmark.pedantic(membench.profile, args=(FAMILY_MODELS[family], method), kwargs=kw, rounds=1,
                                iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(memory_info(result))
    benchmark.extra_info.update(family=family, config="tiny", precision=result.precision, optimizer=result.optimizer,
                                grad_accum=result.grad_accum)
    if result.predicted_cuda is not None:
        benchmark.extra_info["predicted_cuda_bytes"]["paged_bytes"] = result.predicted_cuda.paged_bytes
    assert result.activation_bytes > 0
