"""pytest hooks (imported by tests/conftest.py): with $CAFE_TEST_TIMING set to a path, write there a JSON of where
the suite's time went: every test's setup/call/teardown seconds and marks, every fixture setup of 0.1 s or more
(the shared tiny demo, the SLURM cluster...), the machine and its load. `benchmarks/ci_timing.py` prints it.
Under pytest-xdist the controller writes it: it gets every test's report, and each worker's fixture setups when
the worker ends; every entry names its worker ("main" without xdist)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

TESTS: dict[str, dict] = {}
FIXTURES: list[dict] = []
MARKS = ("e2e", "slurm", "fault")
STARTED = {"time": time.perf_counter(), "load": os.getloadavg()[0], "test": "", "worker": "main"}


def pytest_configure(config: pytest.Config) -> None:
    """Which process this is: an xdist worker (its id, from its config: a pytest run inside a test inherits the
    worker's environment) or the process that writes the record ("main")."""
    if hasattr(config, "workerinput"):
        STARTED["worker"] = config.workerinput["workerid"]


def _target() -> Path | None:
    path = os.environ.get("CAFE_TEST_TIMING")
    return Path(path) if path else None


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):
    began = time.perf_counter()
    yield
    seconds = time.perf_counter() - began
    if _target() and seconds >= 0.1:  # "for": the test whose setup made it (a shared fixture's first user)
        FIXTURES.append({"name": fixturedef.argname, "scope": fixturedef.scope, "seconds": seconds,
                         "for": STARTED["test"], "worker": STARTED["worker"]})  # fmt: skip


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    STARTED["test"] = plain_id(nodeid)


def plain_id(nodeid: str) -> str:
    """The test's id without the `@group` xdist's loadgroup appends (a parametrized id may hold an @ in its [])."""
    return nodeid.rsplit("@", 1)[0] if nodeid.rfind("@") > nodeid.rfind("]") else nodeid


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _target() or STARTED["worker"] != "main":  # a worker: the controller records its reports
        return
    node = getattr(report, "node", None)  # xdist's controller: the worker that ran it
    entry = TESTS.setdefault(
        plain_id(report.nodeid),
        {"id": plain_id(report.nodeid), "file": report.nodeid.split("::")[0], "outcome": "passed", "marks": [],
         "setup": 0.0, "call": 0.0, "teardown": 0.0, "worker": node.gateway.id if node else "main"},
    )  # fmt: skip
    entry[report.when] = report.duration
    entry["marks"] = sorted(set(entry["marks"]) | {m for m in MARKS if m in report.keywords})
    if report.failed or (report.skipped and entry["outcome"] != "failed"):
        entry["outcome"] = report.outcome


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist's controller, as a worker ends: that worker's fixture setups."""
    FIXTURES.extend(getattr(node, "workeroutput", {}).get("cafe_fixtures", []))


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = _target()
    if not target:
        return
    if hasattr(session.config, "workeroutput"):  # a worker: its fixtures go to the controller, which writes
        session.config.workeroutput["cafe_fixtures"] = FIXTURES
        return
    from cafe.bench.machine import cpu_model  # imports torch: only where the record is written

    tests = [{**t, "seconds": t["setup"] + t["call"] + t["teardown"]} for t in TESTS.values()]
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1min": {"before": STARTED["load"], "after": os.getloadavg()[0]},
        "wall_seconds": time.perf_counter() - STARTED["time"],
        "workers": sorted({t["worker"] for t in tests}),
        "tests": sorted(tests, key=lambda t: -t["seconds"]),
        "fixtures": sorted(FIXTURES, key=lambda f: -f["seconds"]),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=1) + "\n")
