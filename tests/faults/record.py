"""pytest plugin for tests/faults/table.py: records each fault case's marker, outcome and `files_lost` property
into the JSON file named by $CAFE_FAULT_RECORD (loaded only by table.py, with `-p record`). A case that counted
no files (tests/lost_files.py) records `files_lost: null`, never a default 0."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

RECORDS: list[dict] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("fault")
    if marker is None or not (report.when == "call" or (report.when == "setup" and not report.passed)):
        return
    props = dict(report.user_properties)
    RECORDS.append(
        {
            "test": item.originalname if hasattr(item, "originalname") else item.name,
            "id": item.nodeid,
            "fault": marker.args[0],
            "expected": marker.args[1],
            "existing": bool(marker.kwargs.get("existing", False)),
            "generated": bool(marker.kwargs.get("generated", False)),
            "outcome": report.outcome,
            "files_lost": props.get("files_lost"),
            "seconds": round(report.duration, 2),
        }
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("CAFE_FAULT_RECORD")
    if target:
        Path(target).write_text(json.dumps(RECORDS, indent=1))
