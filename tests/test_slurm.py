"""workflow/profiles/slurm on a real SLURM: a single-node cluster (tests/slurm_cluster.py: munge, slurmctld and
slurmd from Debian's packages, two fake GPUs) reruns the ERF / insertion part of the tiny demo through `sbatch`.

Needs root and `apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge` (.ci/run does
both); elsewhere the test is skipped with the reason (a failure under CI=true: tests/skips_fail_in_ci.py).
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from slurm_cluster import SlurmCluster, missing_commands
from workflow_utils import copy_workspace, run

# One cluster at a time: it links SLURM's fixed configuration path (/etc/slurm/slurm.conf), so under pytest-xdist
# every test here runs on one worker (tests/worker_units.py).
pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.xdist_group("slurm")]

# The profile as users get it, plus what a cluster without slurmdbd needs (see the profile's comments).
SNAKEMAKE = [
    "snakemake",
    "--profile",
    "workflow/profiles/slurm",
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "5",
]
# The smallest slice that still shows what SLURM changes, in one `snakemake --profile` run (the profile keeps
# going past a failed job, so both halves run side by side): outputs deleted from the finished local run and
# remade through SLURM, a GPU rule with the profile's own resources (erf), a GPU rule that waits for another SLURM
# job's output (insertion), a CPU rule (sae_summary); and one ERF job whose input is broken, which fails twice
# (the profile's one retry) with its SLURM log named to the user. The broken input is read by no other job.
RERUN = ["results/erf/layer3/ig.h5", "results/metrics/sae.json"]
TARGET = "results/insertion/layer3/ig.csv"
FOLLOWERS = [TARGET]
BROKEN = "results/features/layer1.h5"
FAILING = "results/erf/layer1/gradient.h5"
GPU_RULES = {"erf", "insertion", "greedy"}
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
PLANNED = re.compile(r"^(\w+)\s+(\d+)$", re.M)  # a row of Snakemake's job table (rule, count)
# What the deletions above must rerun at least, the failing job included (rules added later between them are
# counted from the dry run's plan).
AT_LEAST = Counter(erf=2, insertion=1, sae_summary=1)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM, its daemons stopped by process id afterwards."""
    if missing := missing_commands():
        pytest.skip(f"SLURM is not installed (missing {', '.join(missing)})")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd needs root")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        seconds = cluster.start()
    except RuntimeError as exc:
        cluster.stop()
        pytest.skip(f"SLURM did not start: {exc}")
    print(f"single-node SLURM up in {seconds:.1f} s")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def rerun(slurm, finished_tiny_demo, tmp_path_factory):
    """A copy of the finished local run after one `snakemake --profile .../slurm`: its deleted outputs remade with
    what follows them up to TARGET, and the job reading BROKEN failed. Snakemake does not remake missing
    intermediate files while the final ones are up to date, so the deleted files are named as targets."""
    root = copy_workspace(finished_tiny_demo, tmp_path_factory.mktemp("slurm-run") / "study")
    for path in [*RERUN, FAILING]:
        (root / path).unlink()
    broken = root / BROKEN
    stat = broken.stat()
    broken.write_bytes(b"not an HDF5 file")  # the ERF job reading it fails; its old mtime keeps the rest as is
    os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    targets = [TARGET, *RERUN, FAILING]
    plan = run(["snakemake", "-n", *targets], root).stdout
    planned = Counter({rule: int(n) for rule, n in PLANNED.findall(plan) if rule not in ("all", "total")})
    start = time.perf_counter()
    result = run([*SNAKEMAKE, *targets], root, check=False, timeout=1800, extra_env={"SLURM_CONF": str(slurm.conf)})
    seconds = time.perf_counter() - start
    submitted = dict(SUBMITTED.findall(result.stdout + result.stderr))
    print(f"SLURM run: {len(submitted)} jobs submitted through sbatch in {seconds:.0f} s")
    return root, result, submitted, planned


def failed_ones(submitted: dict[str, str]) -> set[str]:
    """The SLURM job ids of the failing ERF job's submissions (its SLURM log folder names rule and wildcards)."""
    return {jobid for jobid, log in submitted.items() if "/rule_erf/1_gradient/" in log}


def rule_of(job: dict[str, str]) -> str:
    """The rule of a job the plugin submitted, from its comment (`rule_<rule>` or `rule_<rule>_wildcards_<...>`)."""
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def test_jobs_went_through_sbatch_with_the_profiles_resources(slurm, rerun):
    _, _, submitted, planned = rerun
    held = {job["JobId"]: job for job in slurm.jobs()}
    failed = failed_ones(submitted)
    assert planned >= AT_LEAST and len(submitted) == planned.total() + 1  # every planned job, and one retry
    assert set(submitted) <= set(held)
    assert Counter(rule_of(held[jobid]) for jobid in set(submitted) - failed) + Counter(erf=1) == planned
    assert all(held[jobid]["JobState"] == "COMPLETED" for jobid in set(submitted) - failed)
    erf = next(held[jobid] for jobid in submitted if rule_of(held[jobid]) == "erf")
    assert (erf["TimeLimit"], erf["MinMemoryNode"], erf["NumCPUs"]) == ("02:00:00", "32000M", "4")  # set-resources


def test_outputs_equal_the_local_run(rerun, finished_tiny_demo):
    root, _, _, _ = rerun
    for path in RERUN + FOLLOWERS:
        assert (root / path).stat().st_mtime > (finished_tiny_demo / path).stat().st_mtime, f"{path} not remade"
        if path.endswith(".h5"):
            assert_same_h5(root / path, finished_tiny_demo / path)
        else:
            assert (root / path).read_bytes() == (finished_tiny_demo / path).read_bytes(), path


def test_gpu_jobs_asked_for_a_gpu_and_saw_their_cuda_visible_devices(slurm, rerun):
    root, _, submitted, _ = rerun
    held = {job["JobId"]: job for job in slurm.jobs()}
    for jobid in submitted:
        asked = held[jobid].get("TresPerJob", "") == "gres:gpu:1"
        assert asked == (rule_of(held[jobid]) in GPU_RULES), held[jobid]
    seen = {}
    for log in [*(root / "results/logs/erf").glob("*.log"), *(root / "results/logs/insertion").glob("*.log")]:
        for visible, jobid in re.findall(r"CUDA_VISIBLE_DEVICES=(\S+) from SLURM job (\d+)", log.read_text()):
            seen[jobid] = visible
    gpu_jobs = {jobid for jobid in submitted if rule_of(held[jobid]) in GPU_RULES}
    # every GPU job that ran to the end, and only this run's (the local run had no SLURM job; the failing job's
    # log is rewritten by its retry)
    assert gpu_jobs - failed_ones(submitted) <= set(seen) <= gpu_jobs
    assert set(seen.values()) <= {"0", "1"}  # the node's two GPUs


def test_a_failing_job_is_reported_with_its_slurm_log(slurm, rerun):
    root, result, submitted, _ = rerun
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert len(failed_ones(submitted)) == 2  # the profile's one retry
    held = {job["JobId"]: job for job in slurm.jobs()}
    assert all(held[jobid]["JobState"] == "FAILED" for jobid in failed_ones(submitted))
    assert re.search(r"Error in rule erf:\n    message: SLURM-job '\d+' failed, SLURM status is: 'FAILED'", text)
    logs = re.findall(
        r"log: results/logs/erf/layer1_gradient.log, (\S+/\.snakemake/slurm_logs/rule_erf/1_gradient/\d+\.log)", text
    )
    assert logs, text[-4000:]
    assert "Error in rule erf" in Path(logs[-1]).read_text()
    assert "not a readable HDF5 file" in (root / "results/logs/erf/layer1_gradient.log").read_text()


def assert_same_h5(a: Path, b: Path) -> None:
    """Same datasets and attributes, but the measured throughput (targets_per_s) that any two runs differ in."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa) == sorted(fb), a
        for name in fa:
            np.testing.assert_array_equal(fa[name][()], fb[name][()], err_msg=f"{a}:{name}")
        attrs = [{k: str(v) for k, v in h.attrs.items() if k != "targets_per_s"} for h in (fa, fb)]
        assert attrs[0] == attrs[1], a
