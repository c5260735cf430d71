"""`membench report` on a small fixture database: PNGs, one self-contained HTML, a real browser.

Fixtures live here, not in a nested conftest.py (that would shadow tests/conftest.py as module `conftest`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .fixture_db import build_fixture_db

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="session")
def fixture_db(tmp_path_factory):
    return build_fixture_db(tmp_path_factory.mktemp("reportdb") / "fixture.db")


def _find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium; installs Debian's `chromium` with apt-get if missing (as root)."""
    path = _find_browser()
    if path:
        return path
    reason = "no Chromium on PATH"
    apt = shutil.which("apt-get")
    if apt and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run([apt, "update"], check=True, capture_output=True, timeout=300, env=env)
            subprocess.run([apt, "install", "-y", "--no-install-recommends", "chromium"], check=True,
                           capture_output=True, timeout=600, env=env)
        except (subprocess.SubprocessError, OSError) as exc:
            err = getattr(exc, "stderr", b"") or b""
            reason = f"apt-get install chromium failed: {err.decode(errors='replace').strip()[-200:] or exc}"
        path = _find_browser()
        if path:
            return path
    elif not apt:
        reason += " and no apt-get to install it"
    else:
        reason += " and not root, so apt-get cannot install it"
    pytest.skip(f"cannot run the HTML report in a real browser: {reason}")

EXPECTED = ("memory_vs-seq_len", "memory_vs-batch_size", "layers", "breakdown", "pareto", "curves", "steptime",
            "verify")


def non_blank(png: Path) -> tuple[bool, str]:
    """An image is non-blank when it has real contrast and many colours (not one flat fill)."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(str(png))
    rgb = img[..., :3] if img.ndim == 3 else img
    flat = rgb.reshape(-1, rgb.shape[-1]) if rgb.ndim == 3 else rgb.reshape(-1, 1)
    colours = len(np.unique((flat * 255).astype(np.uint8), axis=0))
    std = float(rgb.std())
    dark = float((rgb.mean(axis=-1) < 0.5).mean()) if rgb.ndim == 3 else float((rgb < 0.5).mean())
    return std > 0.03 and colours > 20 and dark > 0.002, f"std={std:.3f} colours={colours} dark={dark:.4f}"


@pytest.fixture(scope="module")
def report(fixture_db, tmp_path_factory):
    from membench.report import build_report

    return build_report(fixture_db, tmp_path_factory.mktemp("report") / "fixture")


def test_every_expected_png_exists_and_is_not_blank(report):
    names = [p.name for p in report.pngs]
    for prefix in EXPECTED:
        found = [p for p in report.pngs if p.name.startswith(prefix + "-")]
        assert found, f"no {prefix}-*.png among {names}"
        for p in found:
            assert p.stat().st_size > 5000, p
            ok, why = non_blank(p)
            assert ok, f"{p.name} looks blank: {why}"
    assert not report.skipped, f"figure kinds drew nothing: {report.skipped}"


def test_html_is_self_contained_with_tables_and_provenance(report, fixture_db):
    from membench.results import load

    page = report.html_path.read_text()
    # every figure is inlined; nothing is fetched from anywhere
    imgs = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(imgs) == len(report.pngs)
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    assert not re.search(r"(src|href)=['\"]?(https?:|//|file:)", page)
    assert "<script" not in page and "<link" not in page
    runs = load(fixture_db)
    prov = page.split("id='provenance'")[1]
    for rid in runs["run_id"]:
        assert f"<td class='l'>{rid}</td>" in prov, f"run {rid} missing from the provenance table"
    assert "CUDA out of memory (fixture)" in page  # the failed run is listed with its error
    assert "dominated" in page and "frontier" in page
    # titles name device and dtype
    assert "predicted for CUDA a100-80gb" in page and "fp32" in page  # what the fake runs describe


def test_pareto_frontier_in_the_report_matches_the_data(report, fixture_db):
    from membench.report.pareto import pareto_mask
    from membench.results import load

    tr = load(fixture_db, kind="train", status="ok")
    mask = pareto_mask(tr["estimated_peak_bytes"].astype(float).tolist(), tr["accuracy"].tolist())
    page = report.html_path.read_text()
    table = page.split("<h3>Training runs</h3>")[1].split("</table>")[0]
    for rid, on in zip(tr["run_id"], mask, strict=True):
        row = re.search(rf"<tr class='(front|dom)'><td class='[^']*'>{rid}</td>.*?</tr>", table)
        assert row is not None
        assert (row.group(1) == "front") == on


def test_report_opens_in_headless_chromium(report, chromium):
    shot = report.html_path.parent / "screenshot.png"
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1280,2000",
               f"--screenshot={shot}", report.html_path.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-500:]}"
    ok, why = non_blank(shot)
    assert ok, f"the browser's screenshot looks blank: {why}"


def test_cli_report_and_errors(fixture_db, tmp_path, cli):
    code, out, err = cli("report", "--db", str(fixture_db), "-o", str(tmp_path / "r"))
    assert code == 0, err
    assert (tmp_path / "r" / "report.html").exists()
    code, out, err = cli("report", "--db", str(tmp_path / "missing.db"), "-o", str(tmp_path / "x"))
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    empty = tmp_path / "empty.db"
    empty.touch()
    code, out, err = cli("report", "--db", str(empty), "-o", str(tmp_path / "y"))
    assert code == 2 and "no runs" in err and len(err.strip().splitlines()) == 1, err


def test_empty_schema_database_is_refused(tmp_path, cli):
    from membench.results import connect

    db = tmp_path / "fresh.db"
    connect(db).close()  # a valid membench database with no run
    code, out, err = cli("report", "--db", str(db), "-o", str(tmp_path / "z"))
    assert code == 2 and "no runs" in err, err


def test_report_imports_no_torch():
    code = ("import sys, membench.report, membench.cli.report; from membench.report import figures, build; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_device_label_names_the_target():
    from membench.report.data import device_label

    assert device_label("fake", "", "cuda", "h100-80gb") == "predicted for CUDA h100-80gb (fake tensors, no memory used)"
    assert device_label("fake", "", "cpu", "") == "predicted for CPU kernels (fake tensors, no memory used)"
    assert device_label("fake", "") == "fake (fake tensors, no memory used)"  # stored before targets existed
    assert device_label("cuda", "NVIDIA H200", "cuda", "h200-141gb") == "cuda (NVIDIA H200)"
