"""Where the test suite's time goes: by file, by part (unit tests vs the real DAG, the fault suite, SLURM), by
pytest-xdist worker (its tests' seconds against the wall time: what is left is waiting or start-up), the slowest
tests and the slow fixture setups (the one finished tiny demo, the SLURM cluster; a worker waiting for the demo
another one builds shows as its own setup).

    python benchmarks/ci_timing.py                         # run `pytest -q`, write benchmarks/results/ci_timing.json
    python benchmarks/ci_timing.py -- tests/test_slurm.py  # any pytest arguments after --
    python benchmarks/ci_timing.py --from-json benchmarks/results/ci_timing.json --top 15   # print a recorded run

The record is written by the hooks of tests/timing_record.py ($CAFE_TEST_TIMING); .ci/run keeps one per CI run.
A busy machine inflates every figure: compare shares, and the load averages the record keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results/ci_timing.json"


def part_of(test: dict) -> str:
    """The part of the suite a test belongs to: SLURM, the fault suite's DAG cases, other DAG tests, unit tests."""
    if "slurm" in test["marks"]:
        return "SLURM (real single-node cluster)"
    if test["file"].startswith("tests/faults/"):
        return "fault suite, DAG runs" if "e2e" in test["marks"] else "fault suite, fast cases"
    return "DAG tests (Snakemake/DVC)" if "e2e" in test["marks"] else "unit tests"


def summary(record: dict, top: int) -> str:
    """Text: the totals, seconds by part, by worker and by file, the slowest tests, the slow fixture setups."""
    tests = record["tests"]
    load = record["load_average_1min"]
    lines = [
        f"{len(tests)} tests in {record['wall_seconds']:.0f} s on {record['cpu']} ({record['cores']} cores); "
        f"1-min load average {load['before']:.1f} before, {load['after']:.1f} after",
        "",
        "seconds by part:",
    ]
    for name, seconds, count in _totals(tests, part_of):
        lines.append(f"  {seconds:8.1f}  {count:4d} tests  {name}")
    lines += ["", f"seconds by worker (of {record['wall_seconds']:.0f} s wall):"]
    for name, seconds, count in sorted(_totals(tests, lambda t: t.get("worker", "main"))):
        lines.append(f"  {name}: {seconds:8.1f}  {count:4d} tests")
    lines += ["", "seconds by file (10 slowest):"]
    for name, seconds, count in _totals(tests, lambda t: t["file"])[:10]:
        lines.append(f"  {seconds:8.1f}  {count:4d} tests  {name}")
    lines += ["", f"{top} slowest tests (setup + call + teardown; a shared fixture counts in its first user's setup):"]
    for test in tests[:top]:
        lines.append(f"  {test['seconds']:8.1f}  (setup {test['setup']:.1f})  {test['id']}  [{test['outcome']}]")
    lines += ["", "fixture setups of 5 s or more:"]
    for fixture in (f for f in record["fixtures"] if f["seconds"] >= 5):
        where = f" on {fixture['worker']}" if "worker" in fixture else ""
        lines.append(
            f"  {fixture['seconds']:8.1f}  {fixture['name']} ({fixture['scope']}), for {fixture['for']}{where}"
        )
    return "\n".join(lines)


def _totals(tests: list[dict], key) -> list[tuple[str, float, int]]:
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for test in tests:
        seconds[key(test)] += test["seconds"]
        counts[key(test)] += 1
    return sorted(((k, v, counts[k]) for k, v in seconds.items()), key=lambda kv: -kv[1])


def run_suite(out: Path, pytest_args: list[str]) -> int:
    """`pytest -q ARGS` in the checkout with the timing hooks on; pytest's exit code."""
    env = {**os.environ, "CAFE_TEST_TIMING": str(out.resolve())}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *pytest_args], cwd=ROOT, env=env).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where the run's record goes")
    parser.add_argument("--from-json", type=Path, help="print this record instead of running the suite")
    parser.add_argument("--top", type=int, default=15, help="how many of the slowest tests to list")
    parser.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --)")
    args = parser.parse_args()
    code = 0
    if args.from_json is None:
        code = run_suite(args.out, args.pytest_args)
    print(summary(json.loads((args.from_json or args.out).read_text()), args.top))
    return code


if __name__ == "__main__":
    sys.exit(main())
