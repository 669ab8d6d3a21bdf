"""benchmarks/dag_timing.py reads a real Snakemake log: jobs and seconds per rule, each job's log file, and the
start-up seconds every `cafe` process states in it (interpreter and imports), as a share of the job-seconds."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from workflow_utils import REPO, run

SNAKEFILE = """
rule all:
    input: expand("out/{n}.txt", n=[1, 2])

rule step:
    output: "out/{n}.txt"
    log: "logs/step_{n}.log"
    shell: "cafe manifest --params '{{}}' --out out/m{wildcards.n}.csv > {log} 2>&1 || true; touch {output}"
"""  # `cafe manifest` stops at once (no images given), after stating its start-up


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jobs_logs_and_startup_seconds_per_rule_from_a_real_run(tmp_path: Path) -> None:
    timing = load_benchmark("dag_timing")
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    launched = time.time()
    result = run(["snakemake", "--cores", "1"], tmp_path)
    log = result.stdout + result.stderr
    rules = timing.per_rule(log)
    assert rules["step"]["jobs"] == 2 and rules["all"]["jobs"] == 1
    logs = timing.job_logs(log)
    assert sorted(logs["step"]) == ["logs/step_1.log", "logs/step_2.log"]
    startup = timing.startup_seconds(tmp_path, logs)
    stated = [float(m) for n in (1, 2) for m in timing.STARTUP.findall((tmp_path / f"logs/step_{n}.log").read_text())]
    assert len(stated) == 2 and all(0 < s < 600 for s in stated) and startup["step"] == sum(stated)
    jobs = timing.with_startup(rules, startup)
    assert jobs["startup_seconds"] == round(sum(stated), 2) and set(jobs["rules"]) == {"step", "all"}
    share = round(sum(stated) / jobs["job_seconds"], 3) if jobs["job_seconds"] else None  # stamps are whole seconds
    assert jobs["startup_share"] == share
    assert 0 <= timing.first_job_after(log, launched) < time.time() - launched + 1
