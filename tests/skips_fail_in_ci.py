"""pytest hooks (imported by tests/conftest.py): under CI=true a skipped test or module is a failure, its skip
reason kept in the message. One place for every skip of the suite (a missing SLURM, Chromium, reference extra):
the tests say why they skip and CI cannot pass without running them."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip report into a failure that names the skip's reason."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where a skip is a failure: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = (yield).get_result()
    if in_ci() and report.skipped:
        _as_failure(report)
