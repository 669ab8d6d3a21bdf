"""pytest hooks (imported by tests/conftest.py): how the suite splits over pytest-xdist's workers (`--dist
loadgroup`, `--no-loadscope-reorder`: units go out in collection order, a worker asking for the next unit when
it has two tests or fewer left).

- A unit is one test, or every test of a group: an explicit `xdist_group` mark (SLURM: one cluster at a time), else
  the tests of a module that share a module- or class-scoped fixture (built once, by the one worker of the unit).
- Units are ordered so no worker waits for the one finished tiny demo (tests/conftest.py) and both end together:
  first one unit that needs it (its worker builds it), then the groups that do not need it (the other worker's
  work meanwhile), then the groups that need it (a module fixture on top of it: the longest units), then the
  single tests that need it, then the single tests that do not (short ones: they fill the last gaps).

`built_once` makes a folder once for all workers (xdist's documented way: a file lock in the folder that holds
every worker's own temporary folder)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

DEMO = "finished_tiny_demo"
SHARED_SCOPES = ("package", "module", "class")


def group_of(item: pytest.Item) -> str | None:
    """The group `item` belongs to: its xdist_group mark's name, else its module when it uses a module- or
    class-scoped fixture, else None (a unit of its own)."""
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    fixtures = getattr(item, "_fixtureinfo", None)
    defs = fixtures.name2fixturedefs.values() if fixtures else ()
    if any(d.scope in SHARED_SCOPES for chain in defs for d in chain):
        return item.nodeid.split("::")[0]
    return None


def phase(unit: list[pytest.Item], first_demo: bool) -> int:
    """0: the unit that builds the tiny demo; 1: groups without it; 2: groups with it; 3: single tests with it;
    4: single tests without it."""
    needs_demo = any(DEMO in getattr(item, "fixturenames", ()) for item in unit)
    grouped = group_of(unit[0]) is not None
    if needs_demo:
        return 0 if first_demo else 2 if grouped else 3
    return 1 if grouped else 4


def units_in_order(items: list[pytest.Item]) -> list[pytest.Item]:
    """`items` regrouped into units (each contiguous, in its collection order) and the units ordered by phase."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(group_of(item) or item.nodeid, []).append(item)
    keyed, demo_seen = [], False
    for index, unit in enumerate(units.values()):
        first_demo = not demo_seen and any(DEMO in getattr(item, "fixturenames", ()) for item in unit)
        demo_seen |= first_demo
        keyed.append((phase(unit, first_demo), index, unit))
    return [item for _, _, unit in sorted(keyed, key=lambda k: k[:2]) for item in unit]


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    """Before xdist names the groups (it reads xdist_group marks): a module's shared fixture becomes a group mark.
    After every other hook (pytest's own fixture-scope order included): the units in the order above."""
    for item in items:
        group = group_of(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    result = yield
    items[:] = units_in_order(items)
    return result


def built_once(folder: Path, build: Callable[[Path], object], worker: str) -> Path:
    """`folder`, made by `build(folder)` in the first worker to get here while the others wait; a failed build is
    not tried again: the others fail, naming the error."""
    lock, done, failed = (folder.with_name(f"{folder.name}.{end}") for end in ("lock", "done", "failed"))
    with FileLock(lock):
        if failed.exists():
            raise RuntimeError(f"{folder} failed to build in another worker: {failed.read_text()}")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a killed worker left
            try:
                build(folder)
            except BaseException as exc:
                failed.write_text(f"{worker}: {exc!r}"[:20000])
                raise
            done.write_text(worker)
    return folder
