"""Run the fault suite and print its table for the README: one row per fault, what cafe must do, and how many
of its cases were answered so; then the totals (cases tried, answered clearly, files lost: must be 0).

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
    cmd = [sys.executable, "-m", "pytest", *suite, "-p", "record", "-q", "-p", "no:cacheprovider", *pytest_args]
    return subprocess.run(cmd, env=env, cwd=HERE.parents[1]).returncode


def table(records: list[dict]) -> str:
    """Markdown: one row per fault (parametrised cases pooled), then the totals."""
    rows: dict[str, dict] = {}
    for r in records:
        row = rows.setdefault(r["fault"], {**r, "tried": 0, "answered": 0, "lost": 0, "seconds": 0.0})
        row["tried"] += 1
        row["answered"] += r["outcome"] == "passed"
        row["lost"] += r["files_lost"]
        row["seconds"] += r["seconds"]
    lines = ["| fault | expected behaviour | result | files lost |", "| --- | --- | --- | --- |"]
    for row in rows.values():
        verdict = "answered" if row["answered"] == row["tried"] else "**NOT answered**"
        count = f" ({row['answered']}/{row['tried']} cases)" if row["tried"] > 1 else ""
        before = "; already so before the suite" if row["existing"] else ""
        lines.append(f"| {row['fault']} | {row['expected']} | {verdict}{count}{before} | {row['lost']} |")
    tried, answered = len(records), sum(r["outcome"] == "passed" for r in records)
    lost, seconds = sum(r["files_lost"] for r in records), sum(r["seconds"] for r in records)
    lines.append("")
    lines.append(
        f"Cases tried: **{tried}**; answered clearly: **{answered}**; files lost: **{lost}** "
        f"({len(rows)} faults; {seconds:.0f} s of test time)."
    )
    return "\n".join(lines)


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
