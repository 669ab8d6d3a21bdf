"""`device: auto` on a node with several GPUs: each process claims its own, without any GPU here (fake counts)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cafe import devices
from cafe.devices import claim_gpu, gpu_count, select_device
from cafe.errors import CafeError

REPO = Path(__file__).resolve().parents[1]

# A claimer process: claim one of COUNT GPUs, report it, hold it for HOLD seconds (or until killed), report release.
CLAIMER = """
import json, sys, time
from pathlib import Path
from cafe.devices import claim_gpu
count, directory, hold, out = int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
lock = claim_gpu(count, directory, wait_s=60, poll_s=0.05)
start = time.time()
out.write_text(json.dumps({"index": lock.index, "start": start}))
time.sleep(hold)
out.write_text(json.dumps({"index": lock.index, "start": start, "end": time.time()}))
"""


def spawn_claimer(count: int, directory: Path, hold: float, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", CLAIMER, str(count), str(directory), str(hold), str(out)], env=env)


def wait_for(path: Path, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


@pytest.fixture()
def no_scheduler(monkeypatch, tmp_path):
    """A process that no scheduler has given a GPU, with its own lock folder and nothing claimed yet."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # records the variable, so that teardown undoes select_device's
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setattr(devices, "_claimed", None)
    yield
    if devices._claimed is not None:
        devices._claimed.release()


def test_gpu_count_reads_device_files_without_asking_cuda(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-caps"):
        (tmp_path / name).touch()
    assert gpu_count(tmp_path) == 3
    assert gpu_count(tmp_path / "absent") == 0


def test_concurrent_processes_never_hold_the_same_gpu(tmp_path):
    """Six claimers on three fake GPUs: at most three hold one at a time, and no two the same one at once."""
    outs = [tmp_path / f"claimer{i}.json" for i in range(6)]
    procs = [spawn_claimer(3, tmp_path / "locks", 1.0, out) for out in outs]
    assert all(proc.wait(timeout=120) == 0 for proc in procs)
    spans = [json.loads(out.read_text()) for out in outs]
    assert {s["index"] for s in spans} == {0, 1, 2}
    for a in spans:
        for b in spans:
            if a is not b and a["index"] == b["index"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)


def test_a_killed_holder_frees_its_gpu(tmp_path):
    out = tmp_path / "holder.json"
    holder = spawn_claimer(1, tmp_path / "locks", 600, out)
    assert wait_for(out)["index"] == 0
    with pytest.raises(CafeError, match="busy"):
        claim_gpu(1, tmp_path / "locks", wait_s=0.2, poll_s=0.05)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    lock = claim_gpu(1, tmp_path / "locks", wait_s=5, poll_s=0.05)
    assert lock.index == 0
    lock.release()


def test_all_busy_waits_with_a_log_line_then_takes_the_freed_gpu(tmp_path, caplog):
    out = tmp_path / "holder.json"
    holder = spawn_claimer(1, tmp_path / "locks", 1.5, out)
    wait_for(out)
    with caplog.at_level(logging.INFO, logger="cafe.devices"):
        lock = claim_gpu(1, tmp_path / "locks", wait_s=60, poll_s=0.05)
    assert holder.wait(timeout=30) == 0
    assert lock.index == 0
    assert "all 1 GPUs are busy" in caplog.text and "waiting up to 60 s" in caplog.text
    lock.release()


def test_all_busy_past_the_timeout_is_a_clear_error(tmp_path):
    held = claim_gpu(2, tmp_path / "locks", wait_s=0)
    other = claim_gpu(2, tmp_path / "locks", wait_s=0)
    assert {held.index, other.index} == {0, 1}
    with pytest.raises(CafeError, match=r"all 2 GPUs .* busy for 0 s .*--resources gpu=2"):
        claim_gpu(2, tmp_path / "locks", wait_s=0.1, poll_s=0.05)
    held.release()
    other.release()


def test_auto_claims_one_gpu_and_narrows_cuda_visible_devices(no_scheduler, monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "gpu_count", lambda: 4)
    taken = claim_gpu(4, tmp_path / "locks", wait_s=0)  # another job holds GPU 0
    assert select_device("auto") == "cuda"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert (tmp_path / "locks" / "gpu1.lock").exists()
    assert select_device("auto") == "cuda"  # the same process keeps its GPU
    assert devices._claimed.index == 1
    taken.release()


def test_auto_respects_cuda_visible_devices_from_slurm(no_scheduler, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setattr(devices, "gpu_count", lambda: 8)
    with caplog.at_level(logging.INFO, logger="cafe.devices"):
        assert select_device("auto") == "cuda"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert "CUDA_VISIBLE_DEVICES=3 from SLURM job 42" in caplog.text
    assert not (tmp_path / "locks").exists()


def test_auto_in_a_slurm_job_without_a_gpu_uses_the_cpu(no_scheduler, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setattr(devices, "gpu_count", lambda: 8)
    assert select_device("auto") == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_auto_without_gpus_uses_the_cpu_and_explicit_devices_pass_through(no_scheduler, monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    assert select_device("auto") == "cpu"
    assert select_device("cuda:1") == "cuda:1"
    assert select_device("cpu") == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_bad_wait_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv(devices.WAIT_ENV, "soon")
    with pytest.raises(CafeError, match="CAFE_GPU_WAIT='soon'"):
        devices.wait_seconds()
