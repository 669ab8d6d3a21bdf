"""Run the fault suite and print its table for the README: one row per fault, what cafe must do, how many of its
cases were answered so and the files lost (counted from the files, tests/lost_files.py); the generated schema
mutations in their own row; then the totals of real faults and of mutations (files lost: must be 0).

    python tests/faults/table.py                 # the whole suite (the kill/rerun cases take a few minutes)
    python tests/faults/table.py -m "not e2e"    # the fast cases only; extra arguments go to pytest
    python tests/faults/table.py --json runs.json --from-json   # print a recorded run again
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_suite(pytest_args: list[str], record: Path) -> int:
    """Run pytest on tests/faults with the recording plugin; returns pytest's exit code."""
    env = dict(os.environ, CAFE_FAULT_RECORD=str(record))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH", "")]))
    suite = [str(HERE), str(HERE.parent / "test_images.py")]  # the bad-image cases live beside the image tests
    # -n 0: one process, so the recording plugin sees every case (pytest's addopts start workers otherwise)
    cmd = [sys.executable, "-m", "pytest", *suite, "-p", "record", "-n", "0", "-q", "-p", "no:cacheprovider"]
    cmd += pytest_args
    return subprocess.run(cmd, env=env, cwd=HERE.parents[1]).returncode


def table(records: list[dict]) -> str:
    """Markdown: one row per fault (parametrised cases pooled), the generated schema mutations in a row of their
    own after the real faults, then the totals of each. Files lost are those the cases counted from the files;
    a row none of whose cases counts files (nothing on disk at stake) says so instead of 0."""
    real = [r for r in records if not r.get("generated")]
    generated = [r for r in records if r.get("generated")]
    lines = ["| fault | expected behaviour | result | files lost |", "| --- | --- | --- | --- |"]
    lines += [_row(rows) for rows in _by_fault(real).values()]
    lines += [_row(rows, "generated: ") for rows in _by_fault(generated).values()]
    lines += ["", _totals("Real faults", real)]
    if generated:
        lines.append(_totals("Generated schema mutations", generated))
    return "\n".join(lines)


def _by_fault(records: list[dict]) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for r in records:
        rows.setdefault(r["fault"], []).append(r)
    return rows


def _row(cases: list[dict], prefix: str = "") -> str:
    first, tried = cases[0], len(cases)
    answered = sum(r["outcome"] == "passed" for r in cases)
    verdict = "answered" if answered == tried else "**NOT answered**"
    count = f" ({answered}/{tried} cases)" if tried > 1 else ""
    before = "; already so before the suite" if first["existing"] else ""
    return f"| {prefix}{first['fault']} | {first['expected']} | {verdict}{count}{before} | {_lost(cases)} |"


def _lost(cases: list[dict]) -> str:
    """Sum of the counted files lost, with how many cases counted when not all did; "not counted" if none did."""
    counted = [r["files_lost"] for r in cases if r.get("files_lost") is not None]
    if not counted:
        return "not counted (no file at stake)"
    return f"{sum(counted)}" + (f" (counted in {len(counted)}/{len(cases)})" if len(counted) < len(cases) else "")


def _totals(what: str, records: list[dict]) -> str:
    answered = sum(r["outcome"] == "passed" for r in records)
    counted = [r["files_lost"] for r in records if r.get("files_lost") is not None]
    faults = len(_by_fault(records))
    lost = f"**{sum(counted)}**, counted from the files in {len(counted)} cases" if counted else "not counted"
    return (
        f"{what}: cases tried **{len(records)}** ({faults} fault{'s' * (faults != 1)}); answered clearly: "
        f"**{answered}**; files lost: {lost} ({sum(r['seconds'] for r in records):.0f} s of test time)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="where to keep the run's records (default: a temporary file)")
    parser.add_argument("--from-json", action="store_true", help="print the table of --json without running")
    args, pytest_args = parser.parse_known_args()
    code = 0
    with tempfile.TemporaryDirectory() as scratch:
        record = args.json or Path(scratch) / "faults.json"
        if not args.from_json:
            code = run_suite(pytest_args, record)
        print(table(json.loads(record.read_text())))
    return code


if __name__ == "__main__":
    sys.exit(main())
