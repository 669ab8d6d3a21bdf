"""Wall time of the whole demo DAG (the README's first command) on a fresh `results/`, and where it goes.

    python benchmarks/dag_timing.py                 # 2 cores, this checkout's working tree
    python benchmarks/dag_timing.py --cores 4 --out /tmp/dag.json

Copies the working tree (tracked and untracked, not ignored; so no results/) into a temporary folder, runs
`snakemake --cores N` there with that copy's `cafe` on PYTHONPATH, through the harness (cafe/bench/harness.py: a
busy machine is refused, or the figure marked void), and writes benchmarks/results/dag_timing.json: total seconds
(median, min, max over `--repeats` runs), the machine, and per rule of the last run the number of jobs, their
summed seconds (from Snakemake's own start/finish timestamps in its log) and their summed start-up seconds
(interpreter and imports, which each `cafe` job states in its log), and the CPU seconds of both (user + system,
also stated by each job: meaningful on a shared machine, where wall seconds are not); then the start-up share of
all job-seconds and of all job CPU seconds, the seconds before the first job started (Snakemake loading the DAG),
and the CPU seconds of the whole run (Snakemake and its jobs). `--params FILE` runs the copy with that params.yaml
(tests/workflow_utils.py's TINY_PARAMS, say).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
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
LOG = re.compile(r"^\s+log: (\S+)$")
STARTUP = re.compile(r"cafe\.cli: start-up ([\d.]+) s")
STARTUP_CPU = re.compile(r"cafe\.cli: start-up [\d.]+ s, ([\d.]+) s CPU")
JOB_CPU = re.compile(r"cafe\.cli: ([\d.]+) s CPU in all")
STATED = {"startup_seconds": STARTUP, "startup_cpu_seconds": STARTUP_CPU, "cpu_seconds": JOB_CPU}


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


def job_logs(log: str) -> dict[str, list[str]]:
    """The log files of each rule's jobs, as Snakemake lists them when it starts a job."""
    rule, logs = None, defaultdict(list)
    for line in log.splitlines():
        if m := RULE.match(line.strip()):
            rule = m.group(1)
        elif (m := LOG.match(line)) and rule:
            logs[rule] += m.group(1).split(", ")
    return dict(logs)


def stated_seconds(work: Path, logs: dict[str, list[str]], pattern: re.Pattern = STARTUP) -> dict[str, float]:
    """Per rule, the summed seconds its jobs' logs state in lines that `pattern` matches (default: start-up)."""
    return {
        rule: sum(float(m.group(1)) for name in names if (work / name).is_file()
                  for m in pattern.finditer((work / name).read_text(errors="replace")))
        for rule, names in logs.items()
    }  # fmt: skip


def with_startup(rules: dict[str, dict[str, float]], stated: dict[str, dict[str, float]]) -> dict:
    """The per-rule table with what the jobs stated (`stated`: name -> per-rule seconds, e.g. `startup_seconds`),
    sorted by job-seconds; the totals, the start-up share of the job-seconds and of the job CPU seconds."""
    table = {
        rule: {**r, **{name: round(per_rule.get(rule, 0.0), 2) for name, per_rule in stated.items()}}
        for rule, r in rules.items()
    }
    totals = {name: sum(per_rule.get(rule, 0.0) for rule in rules) for name, per_rule in stated.items()}
    job_seconds = sum(r["seconds"] for r in rules.values())
    startup, cpu = totals.get("startup_seconds", 0.0), totals.get("cpu_seconds")
    return {
        "rules": dict(sorted(table.items(), key=lambda kv: -kv[1]["seconds"])),
        "job_seconds": job_seconds,
        **{name: round(total, 2) for name, total in totals.items()},
        "startup_share": round(startup / job_seconds, 3) if job_seconds else None,
        "startup_cpu_share": round(totals.get("startup_cpu_seconds", 0.0) / cpu, 3) if cpu else None,
    }


def first_job_after(log: str, began: float) -> float | None:
    """Seconds from the run's launch (a `time.time()`) to the first job's start stamp: loading the DAG."""
    for line in log.splitlines():
        if m := STAMP.match(line.strip()):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
            return max(stamp.timestamp() - began, 0.0)
    return None


def children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (Snakemake, and through it every job)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_dag(cores: int, resources: list[str], params: Path | None, runs: list[dict]) -> None:
    """Snakemake on a fresh copy of the working tree (with `params` as its params.yaml, if given); its log, what
    its jobs stated (start-up and CPU seconds) and its DAG-load seconds appended to `runs`."""
    with tempfile.TemporaryDirectory(prefix="cafe-dag-") as tmp:
        work = Path(tmp)
        copy_tree(work)
        if params is not None:
            shutil.copy2(params, work / "params.yaml")
        env = {**os.environ, "PYTHONPATH": str(work)}
        command = ["snakemake", "--cores", str(cores), *(["--resources", *resources] if resources else [])]
        launched, used = time.time(), children_cpu()
        run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        used = children_cpu() - used
        log = run.stdout + run.stderr
        if run.returncode:
            raise SystemExit(f"snakemake failed ({run.returncode}):\n{log[-4000:]}")
        logs = job_logs(log)
        stated = {name: stated_seconds(work, logs, pattern) for name, pattern in STATED.items()}
        runs.append({"log": log, "stated": stated, "cpu": used, "dag_load_seconds": first_job_after(log, launched)})


def main() -> None:
    """Run the DAG once on a fresh copy and write the timing JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--resources", nargs="+", default=[], help="passed to snakemake, e.g. gpu=1")
    parser.add_argument("--repeats", type=int, default=1, help="whole DAG runs, each on a fresh copy (default 1)")
    parser.add_argument("--params", type=Path, help="the params.yaml the copy runs with (default: this checkout's)")
    parser.add_argument("--out", type=Path, default=OUT)
    add_arguments(parser)
    args = parser.parse_args()
    harness = from_arguments(args)
    admission, runs = harness.admit(), []
    dag = lambda: run_dag(args.cores, args.resources, args.params, runs)  # noqa: E731
    figure = harness.time(dag, repeats=args.repeats, warmup=0)
    result = {
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "machine": {**describe(torch.device("cpu")), "admission": admission},
        "cores": args.cores,
        "resources": args.resources,
        "params": str(args.params or "params.yaml"),
        "seconds": figure.stats()["median"],
        "figure": figure.record(),
        "dag_load_seconds": runs[-1]["dag_load_seconds"],
        "run_cpu_seconds": round(runs[-1]["cpu"], 2),  # Snakemake and all its jobs; cpu_seconds: the jobs' own
        **with_startup(per_rule(runs[-1]["log"]), runs[-1]["stated"]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"seconds": figure.stats(), "void": figure.void}))


if __name__ == "__main__":
    main()
