"""The suite's own hooks: a skip (of a test, by a fixture, by skipif, of a whole module) is a failure under
CI=true and a skip elsewhere; $CAFE_TEST_TIMING records every test's phases and the slow fixtures, and
benchmarks/ci_timing.py prints that record."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_utils import REPO

SKIPPING = """
import pytest

@pytest.fixture(scope="module")
def cluster():
    pytest.skip("no cluster here")

def test_skipped_by_a_fixture(cluster):
    pass

@pytest.mark.skipif(True, reason="an extra is not installed")
def test_skipped_by_a_mark():
    pass

def test_skipped_inside():
    pytest.skip("no browser")

@pytest.mark.xfail(reason="known")
def test_expected_to_fail():
    assert False

def test_passes():
    pass
"""
MODULE_SKIP = 'import pytest\npytest.skip("module needs X", allow_module_level=True)\ndef test_x():\n    pass\n'


def run_pytest(path: Path, ci: bool, *plugins: str, **env: str) -> subprocess.CompletedProcess:
    """pytest on `path` with the named plugins of tests/ loaded, with or without CI=true."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "CAFE_TEST_TIMING")} | env
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), environ.get("PYTHONPATH", "")])
    if ci:
        environ["CI"] = "true"
    options = [arg for name in plugins for arg in ("-p", name)]
    cmd = [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", *options, str(path)]
    return subprocess.run(cmd, cwd=path if path.is_dir() else path.parent, env=environ, capture_output=True, text=True)


@pytest.fixture()
def suite(tmp_path: Path) -> Path:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    return tmp_path


def test_every_kind_of_skip_fails_under_ci_with_its_reason(suite: Path) -> None:
    result = run_pytest(suite / "test_skipping.py", True, "skips_fail_in_ci")
    said = result.stdout
    assert result.returncode == 1 and "1 failed, 1 passed, 1 xfailed, 2 errors" in said, said  # setup: errors
    for reason in ("no cluster here", "an extra is not installed", "no browser"):
        assert f"skipped under CI=true, where a skip is a failure: Skipped: {reason}" in said, reason
    module = run_pytest(suite / "test_module_skip.py", True, "skips_fail_in_ci")
    assert module.returncode != 0 and "a skip is a failure: Skipped: module needs X" in module.stdout, module.stdout


def test_skips_stay_skips_outside_ci(suite: Path) -> None:
    result = run_pytest(suite, False, "skips_fail_in_ci")
    assert result.returncode == 0, result.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in result.stdout, result.stdout


def test_timing_record_holds_every_test_and_the_slow_fixture(tmp_path: Path) -> None:
    (tmp_path / "test_timed.py").write_text(
        "import time, pytest\n@pytest.fixture(scope='session')\ndef slow():\n    time.sleep(0.3)\n"
        "@pytest.mark.e2e\ndef test_a(slow):\n    time.sleep(0.2)\ndef test_b(slow):\n    assert False\n"
    )
    record = tmp_path / "timing.json"
    run_pytest(tmp_path, False, "timing_record", CAFE_TEST_TIMING=str(record))
    timing = json.loads(record.read_text())
    tests = {t["id"].split("::")[1]: t for t in timing["tests"]}
    assert tests["test_a"]["setup"] >= 0.3 and tests["test_a"]["call"] >= 0.2 and tests["test_a"]["marks"] == ["e2e"]
    assert tests["test_b"]["outcome"] == "failed" and tests["test_b"]["setup"] < 0.3
    assert [(f["name"], f["scope"]) for f in timing["fixtures"]] == [("slow", "session")]
    ci_timing = load_benchmark("ci_timing")
    printed = ci_timing.summary(timing, top=1)
    slowest = printed.split("slowest tests")[1]
    assert "2 tests in" in printed and "test_timed.py::test_a" in slowest and "test_b" not in slowest
    assert "DAG tests (Snakemake/DVC)" in printed and "unit tests" in printed


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
