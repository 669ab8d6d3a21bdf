"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium, and a `cafe annotate` server
run as a person runs it: the CLI in a subprocess, its printed address parsed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1500,1000",
)


def need_chromium() -> None:
    """Skip where Debian's chromium is not installed (CI installs it; a skip fails under CI=true, see conftest)."""
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium with a fresh profile, closed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    need_chromium()
    profile = tempfile.mkdtemp(prefix="cafe-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def annotate_server(cwd: Path, *args: str, timeout: float = 300) -> Iterator[str]:
    """`cafe annotate ARGS --port 0` in `cwd`; yields the printed address (with its token), stops the server."""
    command = [sys.executable, "-m", "cafe", "annotate", "--port", "0", *args]
    with tempfile.TemporaryFile("w+") as errors:  # not a pipe: progress bars must never block the server
        server = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=errors, text=True, env=os.environ)
        try:
            yield _address(server, errors, time.monotonic() + timeout)
        finally:
            server.terminate()
            server.wait(timeout=30)


def _address(server: subprocess.Popen, errors, deadline: float) -> str:
    """The address the server prints once it is ready."""
    for line in server.stdout:
        if line.strip().startswith("open http"):
            return line.split()[1]
        if time.monotonic() > deadline:
            raise TimeoutError("cafe annotate printed no address")
    errors.seek(0)
    raise RuntimeError(f"cafe annotate stopped: {errors.read()}")
