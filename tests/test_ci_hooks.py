"""The suite's own hooks, in one process and on pytest-xdist's workers: a skip (of a test, by a fixture, by skipif,
of a whole module) is a failure under CI=true and a skip elsewhere; $CAFE_TEST_TIMING records every test's phases
and the slow fixtures, and benchmarks/ci_timing.py prints that record; tests sharing a module's fixture run on one
worker, units go out in the order that keeps workers from waiting, a shared folder is built once."""

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


def outside_this_suite() -> dict[str, str]:
    """This environment without what makes a pytest run inside a test part of this suite: CI, the timing record,
    and xdist's worker variables."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "CAFE_TEST_TIMING")}
    return {k: v for k, v in environ.items() if not k.startswith("PYTEST_XDIST_")}


def run_pytest(
    path: Path, ci: bool, *plugins: str, workers: int = 0, args: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess:
    """pytest ARGS on `path` with the named plugins of tests/ loaded, with or without CI=true, on `workers` xdist
    workers (0: in one process) split as the suite is (pyproject.toml's addopts)."""
    environ = outside_this_suite() | env
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), environ.get("PYTHONPATH", "")])
    if ci:
        environ["CI"] = "true"
    options = [arg for name in plugins for arg in ("-p", name)]
    options += ["-n", str(workers), "--dist", "loadgroup", "--no-loadscope-reorder"]
    cmd = [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", *options, *args, str(path)]
    return subprocess.run(cmd, cwd=path if path.is_dir() else path.parent, env=environ, capture_output=True, text=True)


@pytest.fixture()
def suite(tmp_path: Path) -> Path:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    return tmp_path


@pytest.mark.parametrize("workers", [0, 2])
def test_every_kind_of_skip_fails_under_ci_with_its_reason(suite: Path, workers: int) -> None:
    result = run_pytest(suite / "test_skipping.py", True, "skips_fail_in_ci", workers=workers)
    said = result.stdout
    assert result.returncode == 1 and "1 failed, 1 passed, 1 xfailed, 2 errors" in said, said  # setup: errors
    for reason in ("no cluster here", "an extra is not installed", "no browser"):
        assert f"skipped under CI=true, where a skip is a failure: Skipped: {reason}" in said, reason
    module = run_pytest(suite / "test_module_skip.py", True, "skips_fail_in_ci", workers=workers)
    assert module.returncode != 0 and "a skip is a failure: Skipped: module needs X" in module.stdout, module.stdout


def test_skips_stay_skips_outside_ci(suite: Path) -> None:
    result = run_pytest(suite, False, "skips_fail_in_ci")
    assert result.returncode == 0, result.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in result.stdout, result.stdout


@pytest.mark.parametrize("workers", [0, 2])
def test_timing_record_holds_every_test_and_the_slow_fixture(tmp_path: Path, workers: int) -> None:
    """On two workers each test runs on its own (two tests, two workers: one each), so each builds the session
    fixture: the controller's record holds both tests, each worker's setup, and which worker did what."""
    (tmp_path / "test_timed.py").write_text(
        "import time, pytest\n@pytest.fixture(scope='session')\ndef slow():\n    time.sleep(0.3)\n"
        "@pytest.mark.e2e\ndef test_a(slow):\n    time.sleep(0.2)\ndef test_b(slow):\n    assert False\n"
    )
    record = tmp_path / "timing.json"
    run_pytest(tmp_path, False, "timing_record", workers=workers, CAFE_TEST_TIMING=str(record))
    timing = json.loads(record.read_text())
    tests = {t["id"].split("::")[1]: t for t in timing["tests"]}
    assert tests["test_a"]["setup"] >= 0.3 and tests["test_a"]["call"] >= 0.2 and tests["test_a"]["marks"] == ["e2e"]
    assert tests["test_b"]["outcome"] == "failed" and (tests["test_b"]["setup"] < 0.3) == (workers == 0)
    workers_seen = ["main"] if workers == 0 else ["gw0", "gw1"]
    assert timing["workers"] == workers_seen and {t["worker"] for t in tests.values()} == set(workers_seen)
    fixtures = sorted((f["name"], f["scope"], f["worker"]) for f in timing["fixtures"])
    assert fixtures == [("slow", "session", worker) for worker in workers_seen]
    ci_timing = load_benchmark("ci_timing")
    printed = ci_timing.summary(timing, top=1)
    slowest = printed.split("slowest tests")[1]
    assert "2 tests in" in printed and "test_timed.py::test_a" in slowest and "test_b" not in slowest
    assert "DAG tests (Snakemake/DVC)" in printed and "unit tests" in printed
    assert all(f"  {worker}: " in printed.split("seconds by worker")[1] for worker in workers_seen)


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UNITS = {
    "conftest.py": "import os, pytest\n"
    "@pytest.fixture(scope='session')\ndef finished_tiny_demo():\n    return 'demo'\n"
    "@pytest.fixture(autouse=True)\ndef where(request):\n"
    "    with open(os.environ['RAN'], 'a') as f:\n"
    "        f.write(f\"{request.node.name} {os.environ.get('PYTEST_XDIST_WORKER', 'main')}\\n\")\n",
    "test_a_demo.py": "def test_d1(finished_tiny_demo):\n    pass\ndef test_d2(finished_tiny_demo):\n    pass\n",
    "test_b_shared.py": "import os, pytest\n@pytest.fixture(scope='module')\ndef world():\n"
    "    with open(os.environ['RAN'], 'a') as f:\n        f.write('world built\\n')\n"
    "def test_w1(world):\n    pass\ndef test_w2(world):\n    pass\ndef test_w3(world):\n    pass\n"
    "def test_free():\n    pass\n",
    "test_c_free.py": "def test_f1():\n    pass\ndef test_f2():\n    pass\n",
    "test_d_slurm.py": "import pytest\npytestmark = pytest.mark.xdist_group('slurm')\n"
    "def test_s1():\n    pass\ndef test_s2():\n    pass\n",
    "test_e_study.py": "import pytest\n@pytest.fixture(scope='module')\ndef study(finished_tiny_demo):\n    pass\n"
    "def test_g1(study):\n    pass\ndef test_g2(study):\n    pass\n",
}


def test_units_keep_a_modules_shared_fixture_and_a_group_on_one_worker_in_the_order_that_saves_waiting(
    tmp_path: Path,
) -> None:
    """Order: the first test that needs the tiny demo (its worker builds it), the groups without it (the other
    worker's work meanwhile), the groups with it, the single tests with it, the other single tests; a module
    fixture is built once."""
    for name, text in UNITS.items():
        (tmp_path / name).write_text(text)
    ran = tmp_path / "ran.txt"
    result = run_pytest(tmp_path, False, "worker_units", workers=2, RAN=str(ran))
    assert result.returncode == 0, result.stdout
    lines = ran.read_text().splitlines()
    worker = dict(line.split() for line in lines if line != "world built")
    assert lines.count("world built") == 1 and len({worker[t] for t in ("test_w1", "test_w2", "test_w3")}) == 1
    assert worker["test_s1"] == worker["test_s2"] and worker["test_g1"] == worker["test_g2"]
    assert set(worker.values()) == {"gw0", "gw1"}
    listed = run_pytest(tmp_path, False, "worker_units", args=("--collect-only", "-q"), RAN=str(ran)).stdout
    order = [line.split("::")[1] for line in listed.splitlines() if "::" in line]
    assert order == ["test_d1", "test_w1", "test_w2", "test_w3", "test_s1", "test_s2", "test_g1", "test_g2",
                     "test_d2", "test_free", "test_f1", "test_f2"]  # fmt: skip


BUILDER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from worker_units import built_once

def build(folder):
    with open(Path(sys.argv[2]).with_name("builds.txt"), "a") as f:
        f.write(sys.argv[3] + "\\n")
    time.sleep(0.5)
    if sys.argv[4] == "fail":
        raise ValueError("no disk left")
    folder.mkdir()
    (folder / "made").write_text(sys.argv[3])

try:
    print((built_once(Path(sys.argv[2]), build, sys.argv[3]) / "made").read_text())
except Exception as exc:
    print(exc)
"""


@pytest.mark.parametrize("outcome", ["ok", "fail"])
def test_a_shared_folder_is_built_once_however_many_workers_ask_at_once(tmp_path: Path, outcome: str) -> None:
    folder = tmp_path / "finished"
    command = [sys.executable, "-c", BUILDER, str(REPO / "tests"), str(folder)]
    workers = [subprocess.Popen([*command, f"gw{i}", outcome], stdout=subprocess.PIPE, text=True) for i in range(4)]
    said = [w.communicate(timeout=120)[0].strip() for w in workers]
    builders = (tmp_path / "builds.txt").read_text().split()
    assert len(builders) == 1, builders
    if outcome == "ok":
        assert said == builders * 4
    else:
        assert said.count("no disk left") == 1, said
        assert all(s.startswith(f"{folder} failed to build in another worker: {builders[0]}: ValueError") for s in
                   said if s != "no disk left"), said  # fmt: skip


def test_the_fault_table_counts_the_cases_it_ran(tmp_path: Path) -> None:
    """`python tests/faults/table.py` (a README command) records every case it runs, also now that plain `pytest`
    starts workers (whose results its recording plugin would never see)."""
    record = tmp_path / "faults.json"
    out = subprocess.run(
        [sys.executable, "tests/faults/table.py", "--json", str(record), "-k", "cross_checks"],
        cwd=REPO,
        env=outside_this_suite(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    cases = json.loads(record.read_text())
    assert len(cases) >= 5 and all(case["outcome"] == "passed" for case in cases), cases
    assert f"cases tried **{len(cases)}**" in out.stdout
