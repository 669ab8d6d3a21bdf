"""Wall time of the whole demo DAG (the README's first command) on a fresh `results/`, and where it goes.

    python benchmarks/dag_timing.py                 # 2 cores, this checkout's working tree
    python benchmarks/dag_timing.py --cores 4 --out /tmp/dag.json

Copies the working tree (tracked and untracked, not ignored; so no results/) into a temporary folder, runs
`snakemake --cores N` there with that copy's `cafe` on PYTHONPATH, through the harness (cafe/bench/harness.py: a
busy machine is refused, or the figure marked void), and writes benchmarks/results/dag_timing.json: total seconds
(median, min, max over `--repeats` runs), the machine, and per rule of the last run the number of jobs and their
summed seconds (from Snakemake's own start/finish timestamps in its log).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import torch

from cafe.bench.harness import add_arguments, from_arguments
from cafe.bench.machine import describe

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results/dag_timing.json"
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished job(?:id)?:? (\d+)")


def copy_tree(dest: Path) -> None:
    """The working tree's files that git would see (tracked, or untracked and not ignored)."""
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def per_rule(log: str) -> dict[str, dict[str, float]]:
    """Jobs and summed seconds per rule, from the timestamps Snakemake prints when a job starts and finishes."""
    now, rule, started, rule_of = None, None, {}, {}
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "seconds": 0.0})
    for line in log.splitlines():
        if m := STAMP.match(line.strip()):
            now = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := RULE.match(line.strip()):
            rule = m.group(1)
        elif (m := JOBID.match(line)) and rule and now:
            started[m.group(1)], rule_of[m.group(1)] = now, rule
        elif (m := FINISHED.match(line.strip())) and m.group(1) in started and now:
            record = totals[rule_of[m.group(1)]]
            record["jobs"] += 1
            record["seconds"] += (now - started.pop(m.group(1))).total_seconds()
    return dict(totals)


def run_dag(cores: int, resources: list[str], logs: list[str]) -> None:
    """Snakemake on a fresh copy of the working tree; its log appended to `logs`."""
    with tempfile.TemporaryDirectory(prefix="cafe-dag-") as tmp:
        work = Path(tmp)
        copy_tree(work)
        env = {**os.environ, "PYTHONPATH": str(work)}
        command = ["snakemake", "--cores", str(cores), *(["--resources", *resources] if resources else [])]
        run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        logs.append(run.stdout + run.stderr)
        if run.returncode:
            raise SystemExit(f"snakemake failed ({run.returncode}):\n{logs[-1][-4000:]}")


def main() -> None:
    """Run the DAG once on a fresh copy and write the timing JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--resources", nargs="+", default=[], help="passed to snakemake, e.g. gpu=1")
    parser.add_argument("--repeats", type=int, default=1, help="whole DAG runs, each on a fresh copy (default 1)")
    parser.add_argument("--out", type=Path, default=OUT)
    add_arguments(parser)
    args = parser.parse_args()
    harness = from_arguments(args)
    admission, logs = harness.admit(), []
    figure = harness.time(lambda: run_dag(args.cores, args.resources, logs), repeats=args.repeats, warmup=0)
    result = {
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "machine": {**describe(torch.device("cpu")), "admission": admission},
        "cores": args.cores,
        "resources": args.resources,
        "seconds": figure.stats()["median"],
        "figure": figure.record(),
        "rules": dict(sorted(per_rule(logs[-1]).items(), key=lambda kv: -kv[1]["seconds"])),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"seconds": figure.stats(), "void": figure.void}))


if __name__ == "__main__":
    main()
