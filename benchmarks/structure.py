"""How many places a run option, a list or a device rule is typed in: the figures issue 19 bounds.

    python benchmarks/structure.py            prints them (tests/test_structure.py checks the bounds)

- files under membench/ that mention `alloc_conf` (one run option, followed through the code);
- functions with more than 8 parameters (self/cls not counted; *args and **kwargs count one each);
- comparisons of a device or target name ("cpu", "fake", "cuda") outside membench/backends.py
  (a torch tensor's `.type` is a tensor's, not a run's, and is not counted);
- places (a statement or a function) that list the optimizers' or the GPUs' names.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "membench"
DEVICE_NAME = re.compile(r"""(?<![.\w])(device|target|kind|tgt)\s*(==|!=)\s*["'](cpu|fake|cuda)["']"""
                         r"""|(?<![.\w])(device|target|kind)\s+(not\s+)?in\s+\(["'](cpu|fake|cuda)["']""")


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def files_mentioning(word: str) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in sources() if word in p.read_text()]


def wide_functions(limit: int = 8) -> list[str]:
    out = []
    for p in sources():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                n = len(names) + (a.vararg is not None) + (a.kwarg is not None)
                n -= 1 if names and names[0] in ("self", "cls") else 0
                if n > limit:
                    out.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n})")
    return out


def device_comparisons() -> list[str]:
    out = []
    for p in sources():
        if p.name == "backends.py" and p.parent == PACKAGE:
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if DEVICE_NAME.search(code):
                out.append(f"{p.relative_to(ROOT)}:{i} {line.strip()}")
    return out


def places_listing(names: list[str], at_least: int = 2, whole: bool = True) -> list[str]:
    """Places (a module-level statement, or one function or method) whose string literals name `at_least`
    of `names`: where a list of them is typed, not where one is used. `whole=False`: a name may begin a
    longer one (a GPU model, a100, in a100-80gb)."""
    end = r"(?![\w-])" if whole else r"(?![\w])"
    out = []

    def strings(node) -> str:
        """The node's string literals, docstrings left out (an example in a docstring lists nothing)."""
        docs = {id(n.value) for n in ast.walk(node) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        return " ".join(n.value for n in ast.walk(node)
                        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs)

    def visit(body, path: Path):
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, path)
                continue
            text = strings(node)
            if sum(bool(re.search(rf"(?<![\w-]){re.escape(n)}{end}", text)) for n in names) >= at_least:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}")

    for p in sources():
        visit(ast.parse(p.read_text()).body, p)
    return out


def optimizer_names() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from membench import optimizers

    return list(optimizers.OPTIMIZERS)


def gpu_models() -> list[str]:
    """The GPUs by model (a100, rtx4090, ...): what a table row, a name matcher or a help text spells."""
    sys.path.insert(0, str(ROOT))
    from membench.gpu import specs

    return sorted({name.split("-")[0] for name in specs.GPUS})


def figures() -> dict[str, list[str]]:
    return {"files mentioning alloc_conf": files_mentioning("alloc_conf"),
            "functions with more than 8 parameters": wide_functions(),
            "device/target name comparisons outside membench/backends.py": device_comparisons(),
            "places listing the optimizers": places_listing(optimizer_names()),
            "places listing the GPUs": places_listing(gpu_models(), whole=False)}


def main() -> None:
    for what, where in figures().items():
        print(f"{what}: {len(where)}")
        for w in where:
            print(f"    {w}")


if __name__ == "__main__":
    main()
