"""Report fixtures: a small results database (built once) and a headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from fixture_db import build_fixture_db

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
