"""The timer of every stage, on the harness (cafe.bench.harness): median, min and max wall time of a few runs, the
memory high-water over them, and the stage record (throughput, achieved FLOP/s) built from it.

Peak memory is the process's resident-set high-water on the CPU (Linux VmHWM, reset before each stage through
/proc/self/clear_refs; where that is impossible, the lifetime ru_maxrss), and torch.cuda.max_memory_allocated
on a GPU.
"""

from __future__ import annotations

import re
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cafe.bench.harness import Figure, Harness

MB = 1 << 20
MIN_PAIRS = 5  # alternating A/B pairs behind every ratio
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Timing:
    """Median, min and max seconds of the timed runs, the memory high-water during them and the resident memory
    before them, and why the figure does not hold (None when it does)."""

    seconds: float
    min_seconds: float
    max_seconds: float
    runs: int
    peak_memory_mb: float
    start_memory_mb: float
    void: str | None = None
    others_cores: float | None = None  # cores' worth of CPU other processes used while it ran


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
    """Times callables through the harness on one device: `warmup` untimed runs, then `repeats` timed runs (or
    `pairs` alternating pairs for two: at least 5 unless a smoke run asks for fewer), with the memory high-water
    of each side over its runs."""

    def __init__(
        self, harness: Harness, device: torch.device, repeats: int = 5, warmup: int = 1, pairs: int | None = None
    ):
        self.harness, self.device, self.repeats, self.warmup = harness, device, repeats, warmup
        self.pairs = pairs or max(repeats, MIN_PAIRS)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def memory_now(self) -> float:
        """Memory in use now (MB): the process's resident set on the CPU, torch's allocations on a GPU."""
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

    def tracked(self, fn: Callable[[], Any]) -> float:
        """Run `fn` once and wait for the device: the memory high-water (MB) while it ran."""
        self._reset_peak()
        fn()
        self._sync()
        return self._peak()

    def _tracked(self, peaks: dict[str, float]) -> Callable[[str, Callable[[], Any]], None]:
        """The harness hook: run tracked, keep each side's highest peak."""

        def run(side: str, fn: Callable[[], Any]) -> None:
            peaks[side] = max(peaks.get(side, 0.0), self.tracked(fn))

        return run

    def _timings(self, figure: Figure, peaks: dict[str, float], start_memory: float) -> list[Timing]:
        return [
            Timing(
                s["median"],
                s["min"],
                s["max"],
                len(s["runs"]),
                peaks[side],
                start_memory,
                figure.void,
                figure.others_cores,
            )
            for side, s in ((side, figure.stats(side)) for side in figure.seconds)
        ]

    def measure(self, fn: Callable[[], Any]) -> Timing:
        """Median (min, max) seconds of `fn` over the timed runs, with the memory high-water over all of them."""
        self._sync()
        start_memory, peaks = self.memory_now(), {}
        figure = self.harness.time(fn, self.repeats, self.warmup, self._tracked(peaks))
        return self._timings(figure, peaks, start_memory)[0]

    def pair(self, a: Callable[[], Any], b: Callable[[], Any]) -> tuple[Timing, Timing, dict[str, Any]]:
        """A and B in alternating pairs: each side's timing and the per-pair ratio seconds(A) / seconds(B)."""
        self._sync()
        start_memory, peaks = self.memory_now(), {}
        figure = self.harness.pair(a, b, self.pairs, self.warmup, self._tracked(peaks))
        ta, tb = self._timings(figure, peaks, start_memory)
        return ta, tb, {**figure.ratio(), "order": figure.order, "others_cores": figure.others_cores,
                        "void": figure.void}  # fmt: skip


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
