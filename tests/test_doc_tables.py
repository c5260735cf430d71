"""The figure tables in README/docs are what benchmarks/doc_tables.py renders from the committed measurements."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "doc_tables.py"


@pytest.fixture(scope="module")
def dt():
    spec = importlib.util.spec_from_file_location("doc_tables", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["doc_tables"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_table_matches_its_measurement(dt):
    assert dt.differences() == []


def test_check_exits_1_on_a_hand_edit(dt, monkeypatch, tmp_path):
    for file in {f for f, _m, _r in dt.TABLES.values()}:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dt.ROOT / file, tmp_path / file)
    monkeypatch.setattr(dt, "ROOT", tmp_path)
    assert dt.main(["--check"]) == 0
    readme = tmp_path / "README.md"
    body = dt.render("headline")
    row = next(line for line in body.splitlines() if line.startswith("| bert-base"))
    edited = row.replace(" MiB |", "0 MiB |", 1)
    readme.write_text(readme.read_text().replace(row, edited))
    assert dt.differences() == ["README.md: table 'headline' differs from what docs/tables/memory.json renders to"]
    assert dt.main(["--check"]) == 1
    dt.write_docs(["headline"])  # --render puts it back
    assert dt.main(["--check"]) == 0
    readme.write_text(readme.read_text().replace("<!-- membench:table fit -->\n", ""))
    assert "README.md: no markers for table 'fit'" in dt.differences()


def test_rewrite_touches_only_the_marked_body(dt):
    text = "a\n<!-- membench:table x -->\nold\n<!-- /membench:table -->\nb\n<!-- membench:table y -->\nkeep\n" \
           "<!-- /membench:table -->\n"
    assert dt.rewrite(text, {"x": "new\n"}) == text.replace("old\n", "new\n")


def test_unknown_measurement_exits_2(dt, capsys):
    assert dt.main(["bogus"]) == 2
    assert "unknown measurement 'bogus'; allowed: memory, methods, fit, speed, chunks" in capsys.readouterr().err


def test_moved_figures_compares_memory_not_time(dt):
    old = {"rows": [{"peak_activation_bytes": 10, "wall_s": 1.0, "sdpa_backends": {"flash": 2}}], "provenance": {}}
    assert dt.moved_figures(old, {"rows": [{"peak_activation_bytes": 10, "wall_s": 9.0,
                                            "sdpa_backends": {"flash": 2}}]}) == []
    moved = dt.moved_figures(old, {"rows": [{"peak_activation_bytes": 11, "wall_s": 1.0,
                                             "sdpa_backends": {"efficient": 2}}]})
    assert sorted(moved) == ["rows[0].peak_activation_bytes: 10 -> 11",
                             "rows[0].sdpa_backends: {'flash': 2} -> {'efficient': 2}"]


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("MEMBENCH_REMEASURE"),
                    reason="opt-in (MEMBENCH_REMEASURE=1): re-measures the memory tables, minutes")
def test_memory_tables_remeasure_as_committed(dt):
    assert dt.main(["--verify", "memory", "methods", "chunks"]) == 0
