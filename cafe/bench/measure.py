"""The one timing helper of every stage: best wall time of a few runs, the memory high-water over them, and the
stage record (throughput, achieved FLOP/s) built from it.

Peak memory is the process's resident-set high-water on the CPU (Linux VmHWM, reset before each stage through
/proc/self/clear_refs; where that is impossible, the lifetime ru_maxrss), and torch.cuda.max_memory_allocated
on a GPU.
"""

from __future__ import annotations

import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

MB = 1 << 20
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Timing:
    """Best seconds of the timed runs, the memory high-water during them and the resident memory before them."""

    seconds: float
    peak_memory_mb: float
    start_memory_mb: float


def _status_kb(field: str) -> float | None:
    """A field (kB) of /proc/self/status, or None off Linux."""
    try:
        match = re.search(rf"^{field}:\s+(\d+)", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return float(match.group(1)) if match else None


def _reset_rss_high_water() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def cpu_memory_kind() -> str:
    """What `peak_memory_mb` means on the CPU of this machine."""
    if _status_kb("VmHWM") is not None and _reset_rss_high_water():
        return "RSS high-water of the bench process during the stage (VmHWM, reset per stage)"
    return "RSS high-water of the bench process since it started (ru_maxrss; cannot be reset here)"


class Timer:
    """Times a callable: `warmup` untimed runs, then timed runs until `repeats` are done or `budget_s` has passed
    (so a long stage runs once and a short one is repeated)."""

    def __init__(self, device: torch.device, repeats: int = 3, warmup: int = 0, budget_s: float = 2.0):
        self.device, self.repeats, self.warmup, self.budget_s = device, repeats, warmup, budget_s

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _memory_now(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / MB
        return (_status_kb("VmRSS") or 0.0) / 1024

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_rss_high_water()

    def _peak(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MB
        hwm = _status_kb("VmHWM")
        if hwm is not None:
            return hwm / 1024
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, kB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB

    def best(self, fn: Callable[[], Any]) -> Timing:
        """Best wall time of `fn` over the timed runs, with the memory high-water over all of them."""
        for _ in range(self.warmup):
            fn()
        self._sync()
        start_memory = self._memory_now()
        self._reset_peak()
        times: list[float] = []
        while not times or (len(times) < self.repeats and sum(times) < self.budget_s):
            began = time.perf_counter()
            fn()
            self._sync()
            times.append(time.perf_counter() - began)
        return Timing(min(times), self._peak(), start_memory)


def stage_record(
    what: str, unit: str, count: float, timing: Timing, flops: float, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One row of the results: throughput in `unit`/s and achieved FLOP/s (the suite adds the utilisation once the
    run's matmul peak is known)."""
    return {
        "what": what,
        "unit": unit,
        "count": count,
        **asdict(timing),
        "throughput": count / timing.seconds,
        "flops": flops,
        "flop_per_s": flops / timing.seconds,
        "params": params or {},
    }
