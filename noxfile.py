"""nox sessions: `nox -s tests`, `nox -s lint`, `nox -s bench` (docs/benchmarks.md), `nox -s oldest`.

Every session installs the project with torch pinned (an unpinned torch, also one
pulled in by transformers or peft, is a multi-GB CUDA build). Override the pin with
MEMBENCH_TORCH, e.g. `MEMBENCH_TORCH=torch==2.13.0 nox -s bench`. Reuse the
virtualenvs between runs with `nox -R`.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"

TORCH = os.environ.get("MEMBENCH_TORCH", "torch==2.13.0")
BASELINE = "benchmarks/baselines/methods.json"
CURRENT = ".benchmarks/current.json"
LOCAL_TIME_BASELINE = ".benchmarks/time-baseline.json"


# What the oldest-versions session runs: the tests that touch what differs between releases (model
# building and blocks, every method on every family, fake == cpu, the attention calls, the profilers,
# the runner and its API). About 4 minutes on 2 cores.
COMPAT_TESTS = [
    "tests/backbones",
    "tests/methods/test_baselines.py",
    "tests/methods/test_baselines_ckpt.py",
    "tests/methods/test_prefix_positions.py",
    "tests/methods/test_modifier_attention.py",
    "tests/methods/test_chunkloss.py",
    "tests/methods/meft/test_meft_parity.py",
    "tests/profilers",
    "tests/test_runner.py",
    "tests/test_python_api.py",
    "tests/quant",  # transformers' bnb quantizer and replace_with_bnb_linear, peft's prepare_model_for_kbit_training
    # each version's modules and events, extrapolated from shallow copies (a few cases: the suite has them all)
    *(f"tests/depth/test_extrapolated.py::{case}" for case in (
        "test_extrapolated_equals_the_whole_model[llama-lora-0]", "test_extrapolated_equals_the_whole_model[opt-meft3-7]",
        "test_extrapolated_equals_the_whole_model[bert-lora-13]", "test_run_says_how_it_profiled",
        "test_a_layer_made_different_falls_back")),
]


def oldest_pins(pyproject: str = "pyproject.toml") -> list[str]:
    """The runtime dependencies at their lower bounds ("torch>=2.11" -> "torch==2.11"): pyproject.toml is
    the one list, so the oldest-versions session tests exactly what it declares."""
    deps = tomllib.loads(Path(pyproject).read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([^,;\s]+)\s*", dep)
        if m is None:
            raise ValueError(f"pyproject.toml: {dep!r} has no single lower bound (NAME>=VERSION) to test")
        pins.append(f"{m[1]}=={m[2]}")
    return pins


def extra_floors(extra: str, pyproject: str = "pyproject.toml") -> list[str]:
    """An optional extra's dependencies at their lower bounds (the quantized bases' bitsandbytes)."""
    deps = tomllib.loads(Path(pyproject).read_text())["project"]["optional-dependencies"][extra]
    return [re.sub(r"\s*>=\s*", "==", dep) for dep in deps]


def install(session: nox.Session) -> None:
    session.install(TORCH, "-e", ".[dev,quant]")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (pass pytest arguments after --, e.g. `nox -s tests -- -k benchcmp`)."""
    install(session)
    session.run("pytest", "-q", *session.posargs)


@nox.session
def oldest(session: nox.Session) -> None:
    """The oldest supported versions (pyproject.toml's lower bounds, torch included) on COMPAT_TESTS.

    torch's oldest release comes from PyPI, which ships CUDA builds only: a large download (about
    4.5 GB with its CUDA libraries), that runs on a CPU-only machine as well."""
    # the runtime floors and the test runner only (COMPAT_TESTS need nothing of the dev extra's tools), on 2 workers
    session.install(*oldest_pins(), *extra_floors("quant"), "-e", ".", "pytest>=8", "pytest-xdist>=3.5")
    session.run("python", "-c", "import torch, transformers, peft; print('oldest: torch', torch.__version__, "
                "'transformers', transformers.__version__, 'peft', peft.__version__)")
    session.run("pytest", "-q", "-n", "2", "-p", "no:cacheprovider", *(session.posargs or COMPAT_TESTS))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, with the project's configuration."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "membench", "tests", "benchmarks", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmark suites, then the memory gate against the committed baseline.

    Arguments after -- go to pytest, e.g. `nox -s bench -- --bench-quick` (time each case
    once) or `-- --bench-devices=cuda` on a GPU box. When .benchmarks/time-baseline.json
    exists (this machine's own baseline), step time is gated against it too.
    """
    install(session)
    Path(CURRENT).parent.mkdir(parents=True, exist_ok=True)
    session.run("pytest", "benchmarks/bench_methods.py", "-q", "-p", "no:cacheprovider",
                f"--benchmark-json={CURRENT}", *session.posargs)
    # memory, exactly, against the committed baseline (time there comes from another machine);
    # a narrowed run (-k, --bench-methods=...) reports the benchmarks it left out without failing
    narrowed = any(a == "-k" or a.startswith(("-k", "--bench-methods", "--bench-models", "--bench-configs",
                                              "--bench-devices")) for a in session.posargs)
    session.run("membench", "bench-compare", BASELINE, CURRENT, "--max-time-regression", "off", "--changed-only",
                *(["--allow-missing"] if narrowed else []))
    if Path(LOCAL_TIME_BASELINE).exists():
        session.log(f"step time against this machine's own baseline {LOCAL_TIME_BASELINE}")
        session.run("membench", "bench-compare", LOCAL_TIME_BASELINE, CURRENT, "--max-time-regression", "10%",
                    "--allow-missing", "--changed-only")
    else:
        session.log(f"no {LOCAL_TIME_BASELINE}: step time not gated. To keep one for this machine: "
                    f"cp {CURRENT} {LOCAL_TIME_BASELINE}")
