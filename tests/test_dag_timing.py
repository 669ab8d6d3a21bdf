"""benchmarks/dag_timing.py reads a real Snakemake log: jobs and seconds per rule, each job's log file, and the
start-up seconds and CPU seconds every `cafe` process states in it (interpreter and imports; the whole job), and
the start-up share of the job-seconds and of the job CPU seconds."""

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
    shell: "cafe params --params /dev/null --defaults > out/p{wildcards.n}.yaml 2> {log}; touch {output}"
"""  # `cafe params` prints the defaults and states its start-up and CPU seconds


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
    stated = {name: timing.stated_seconds(tmp_path, logs, pattern) for name, pattern in timing.STATED.items()}
    texts = [(tmp_path / f"logs/step_{n}.log").read_text() for n in (1, 2)]
    own = {name: [float(m) for t in texts for m in pattern.findall(t)] for name, pattern in timing.STATED.items()}
    assert all(len(values) == 2 and all(0 < s < 600 for s in values) for values in own.values())
    assert all(stated[name]["step"] == sum(own[name]) for name in own)
    assert all(cpu >= startup for cpu, startup in zip(own["cpu_seconds"], own["startup_cpu_seconds"]))
    jobs = timing.with_startup(rules, stated)
    assert jobs["startup_seconds"] == round(sum(own["startup_seconds"]), 2) and set(jobs["rules"]) == {"step", "all"}
    assert jobs["rules"]["step"]["cpu_seconds"] == round(sum(own["cpu_seconds"]), 2)
    share = round(sum(own["startup_seconds"]) / jobs["job_seconds"], 3) if jobs["job_seconds"] else None
    assert jobs["startup_share"] == share  # stamps are whole seconds: job_seconds may be 0
    cpu_share = round(sum(own["startup_cpu_seconds"]) / sum(own["cpu_seconds"]), 3)
    assert jobs["startup_cpu_share"] == cpu_share <= 1
    assert 0 <= timing.first_job_after(log, launched) < time.time() - launched + 1
