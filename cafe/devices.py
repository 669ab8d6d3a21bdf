"""What `device: auto` means: one GPU per process, so that GPU jobs started side by side on a node with several
GPUs (Snakemake assigns no device ids) each get their own instead of all landing on `cuda:0`.

- A scheduler that already chose (SLURM sets `CUDA_VISIBLE_DEVICES` for a job that asked for a GPU) is obeyed;
  a SLURM job without one runs on the CPU.
- Otherwise the process claims a free GPU of the node with an exclusive `flock` on `<lock dir>/gpu<i>.lock`,
  held until the process ends (a killed process frees it: the kernel drops the lock), and narrows
  `CUDA_VISIBLE_DEVICES` to that one device. This must happen before CUDA initialises in the process, so GPUs
  are counted from the `/dev/nvidia<i>` device files, never by asking CUDA; `resolve_device` calls
  `select_device` before any `torch.cuda` call.
- With every GPU busy it waits (saying so in the log) up to `CAFE_GPU_WAIT` seconds (default 24 h), then
  stops with an error. `snakemake --resources gpu=N` (N = the node's GPUs) keeps it from waiting at all.

The lock folder is `CAFE_GPU_LOCK_DIR`, by default /tmp/cafe-gpu-locks: every cafe process of the node, whoever
runs it, must see the same one (it is made world-writable, with the sticky bit, like /tmp).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cafe.errors import CafeError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "CAFE_GPU_LOCK_DIR"
WAIT_ENV = "CAFE_GPU_WAIT"
DEFAULT_LOCK_DIR = "/tmp/cafe-gpu-locks"
DEFAULT_WAIT_S = 24 * 3600.0
POLL_S = 2.0
_DEVICE_FILE = re.compile(r"nvidia(\d+)")


@dataclass
class GpuLock:
    """An exclusive lock on one GPU index, held while the file descriptor is open."""

    index: int
    path: Path
    fd: int

    def release(self) -> None:
        """Close the lock file (the lock goes with it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_claimed: GpuLock | None = None  # this process's GPU, kept until the process exits


def gpu_count(dev: Path = Path("/dev")) -> int:
    """NVIDIA GPUs of this node, from their device files (`/dev/nvidia0`, ...; a container shows only its own)."""
    try:
        return sum(1 for entry in dev.iterdir() if _DEVICE_FILE.fullmatch(entry.name))
    except OSError:
        return 0


def lock_dir() -> Path:
    """Where the per-GPU lock files live: `$CAFE_GPU_LOCK_DIR`, else /tmp/cafe-gpu-locks (not under `$TMPDIR`,
    which a scheduler may set per job: then jobs would not see each other's locks)."""
    return Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)


def wait_seconds() -> float:
    """How long a process waits for a free GPU: `$CAFE_GPU_WAIT` seconds, else 24 h."""
    raw = os.environ.get(WAIT_ENV, "")
    if not raw:
        return DEFAULT_WAIT_S
    try:
        return float(raw)
    except ValueError:
        raise CafeError(f"{WAIT_ENV}={raw!r}: expected a number of seconds") from None


def claim_gpu(
    count: int, directory: Path | None = None, wait_s: float | None = None, poll_s: float = POLL_S
) -> GpuLock:
    """Lock the lowest free GPU index below `count`, waiting up to `wait_s` seconds while all are held."""
    if count < 1:
        raise CafeError(f"no GPU to claim (count {count})")
    directory = directory or lock_dir()
    _make_shared_dir(directory)
    wait_s = wait_seconds() if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    waiting_since = None
    while True:
        for index in range(count):
            held = _try_lock(index, directory / f"gpu{index}.lock")
            if held is not None:
                if waiting_since is not None:
                    log.info("GPU %d came free after %.0f s", index, time.monotonic() - waiting_since)
                return held
        now = time.monotonic()
        if now >= deadline:
            raise CafeError(
                f"all {count} GPUs of this node stayed busy for {wait_s:.0f} s (locks gpu0..gpu{count - 1}.lock in "
                f"{directory}); run at most {count} GPU jobs at once (`snakemake --resources gpu={count}`), raise "
                f"{WAIT_ENV}, or set backbone.device to a device of your choice"
            )
        if waiting_since is None:
            waiting_since = now
            log.info("all %d GPUs are busy (locks in %s): waiting up to %.0f s for one", count, directory, wait_s)
        time.sleep(min(poll_s, max(deadline - now, 0.0)))


def select_device(device: str) -> str:
    """The torch device string for a configured device: 'auto' becomes 'cuda' (one GPU, see the module) or 'cpu'."""
    global _claimed
    if device != "auto":
        return device
    if _claimed is not None:
        return "cuda"
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    job = os.environ.get("SLURM_JOB_ID")
    if given is not None:
        who = f"SLURM job {job}" if job else "the environment"
        if given.strip() in ("", "-1"):
            log.info("CUDA_VISIBLE_DEVICES=%r from %s hides every GPU: using the CPU", given, who)
            return "cpu"
        log.info("CUDA_VISIBLE_DEVICES=%s from %s: using it", given, who)
        return "cuda"
    if job:
        log.info("SLURM job %s has no GPU allocated (no CUDA_VISIBLE_DEVICES): using the CPU", job)
        return "cpu"
    count = gpu_count()
    if count == 0:
        log.info("no NVIDIA GPU on this node: using the CPU")
        return "cpu"
    _claimed = claim_gpu(count)
    os.environ["CUDA_VISIBLE_DEVICES"] = str(_claimed.index)
    log.info("claimed GPU %d of %d (%s): CUDA_VISIBLE_DEVICES=%d", _claimed.index, count, _claimed.path, _claimed.index)
    return "cuda"


def _try_lock(index: int, path: Path) -> GpuLock | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)  # flock needs no write access: any user can take it
    except OSError as exc:
        raise CafeError(f"cannot open the GPU lock file {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return GpuLock(index, path, fd)


def _make_shared_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    try:
        directory.mkdir(parents=True)
        os.chmod(directory, 0o1777)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CafeError(f"{LOCK_DIR_ENV}: cannot create the GPU lock folder {directory}: {exc}") from exc


def resolve_device(device: str) -> torch.device:
    """'auto' is one GPU of this process's own (given by the scheduler or claimed on the node, see the module),
    or the CPU where there is none; any other value is taken as it is."""
    import torch  # here: what only counts or claims GPUs needs no torch

    choice = select_device(device)
    if device == "auto" and choice == "cuda" and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        log.warning("CUDA_VISIBLE_DEVICES=%s but CUDA is not usable here: using the CPU", visible)
        return torch.device("cpu")
    return torch.device(choice)
