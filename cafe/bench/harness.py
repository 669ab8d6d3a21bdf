"""The measuring harness of every benchmark (`cafe bench`, benchmarks/*.py): a figure only holds on a quiet machine.

- Admission: before anything is timed, the 1-minute load average and other processes' CPU use must be at most
  `bound_per_core` (0.5) per core; the harness waits up to `wait_s` for that, then refuses with `BusyMachine`. An
  override (`--allow-busy`) lets a run go on, and every figure of it says "load-override: figures void".
- Repeats: each figure is timed `repeats` times after `warmup` untimed runs: min, median and max are reported.
- Ratios: A and B run in one process in alternating pairs (AB, BA, AB, ...: a linear drift cancels), and the
  ratio is taken per pair, so a ratio never compares two runs taken at different times.
- Void: while a figure runs, the CPU time that processes outside this one (and outside its children) used is
  read from /proc/stat; above the bound the figure is marked void, with why.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cafe.errors import CafeError

BOUND_PER_CORE = 0.5  # load (runnable processes) per core above which a machine is busy
OVERRIDE = "load-override: figures void"
MIN_WINDOW_S = 0.5  # other processes' CPU use is read over at least this long (the kernel counts in 10 ms ticks)
PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BusyMachine(CafeError):
    """The machine stayed above the load bound for the whole wait: figures taken now would measure the load."""


@dataclass(frozen=True)
class Sample:
    """One reading of the machine: the clock, CPU-seconds used machine-wide and by this process tree, the load."""

    wall: float
    machine_cpu: float | None  # None where /proc/stat cannot be read
    own_cpu: float
    load: float


def _machine_cpu() -> float | None:
    """CPU-seconds every process has used since boot, all cores (/proc/stat: user..steal, idle and iowait left out)."""
    try:
        fields = (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICK


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU-seconds of it and of its reaped children) for every live process."""
    table = {}
    for entry in PROC.glob("[0-9]*"):
        try:
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone since the listing
        table[int(entry.name)] = (int(rest[1]), sum(int(x) for x in rest[11:15]) / TICK)
    return table


def _descendants_cpu(root: int) -> float:
    """CPU-seconds of the live descendants of `root` (and of their reaped children): work done on our behalf."""
    table, total, frontier = _process_table(), 0.0, [root]
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    while frontier:
        for child in children.get(frontier.pop(), []):
            total += table[child][1]
            frontier.append(child)
    return total


class Probe:
    """Reads this machine; tests pass a fake with the same `sample` and `cores`."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock, self.cores = clock, os.cpu_count() or 1

    def sample(self) -> Sample:
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        if PROC.is_dir():
            own += _descendants_cpu(os.getpid())
        return Sample(self.clock(), _machine_cpu(), own, os.getloadavg()[0])


def summary(values: Iterable[float]) -> dict[str, Any]:
    """Min, median and max of repeated values, and the values themselves."""
    values = list(values)
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": values}


def others_cores(before: Sample, after: Sample) -> float | None:
    """Cores' worth of CPU that processes outside this process tree used between two samples."""
    if before.machine_cpu is None or after.machine_cpu is None or after.wall <= before.wall:
        return None
    used = (after.machine_cpu - before.machine_cpu) - (after.own_cpu - before.own_cpu)
    return max(used, 0.0) / (after.wall - before.wall)


@dataclass
class Figure:
    """Repeated timings of one thing, or of A and B in alternating pairs, and whether the machine stayed quiet."""

    seconds: dict[str, list[float]]  # per side ("a", and "b" for a pair): seconds of each run
    order: str  # the sides in the order they ran, e.g. "ABBAAB"
    others_cores: float | None
    load: tuple[float, float]  # 1-minute load average before and after
    void: str | None  # why the figure does not hold; None when it does

    def stats(self, side: str = "a") -> dict[str, Any]:
        return summary(self.seconds[side])

    def ratio(self) -> dict[str, Any]:
        """seconds(A) / seconds(B) of each pair (the pair's two runs are adjacent in time)."""
        return summary(a / b for a, b in zip(self.seconds["a"], self.seconds["b"], strict=True))

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {side: self.stats(side) for side in self.seconds}
        if "b" in self.seconds:
            out["a_over_b"] = self.ratio()
        return {**out, "order": self.order, "others_cores": self.others_cores, "load": list(self.load),
                "void": self.void}  # fmt: skip


class Harness:
    """Admits a quiet machine, then times callables: `time` for one thing, `pair` for the ratio of two."""

    def __init__(
        self,
        bound_per_core: float = BOUND_PER_CORE,
        wait_s: float = 120.0,
        override: bool = False,
        probe: Probe | None = None,
        sleep: Callable[[float], None] = time.sleep,
        poll_s: float = 5.0,
    ):
        self.probe, self.sleep = probe or Probe(), sleep
        self.bound = bound_per_core * self.probe.cores  # in cores: load and others' CPU use are both counted so
        self.bound_per_core, self.wait_s, self.poll_s, self.override = bound_per_core, wait_s, poll_s, override
        self.admission: dict[str, Any] = {}

    def _quiet_now(self) -> tuple[bool, float, float | None]:
        """Whether the load and other processes' CPU use over one poll window are within the bound."""
        before = self.probe.sample()
        self.sleep(min(self.poll_s, 1.0))
        after = self.probe.sample()
        others = others_cores(before, after)
        return after.load <= self.bound and (others is None or others <= self.bound), after.load, others

    def admit(self) -> dict[str, Any]:
        """Wait (at most `wait_s`) for a quiet machine; refuse with BusyMachine, unless overridden (figures void)."""
        began = self.probe.sample().wall
        while True:
            quiet, load, others = self._quiet_now()
            waited = self.probe.sample().wall - began
            if quiet or waited >= self.wait_s:
                break
            self.sleep(self.poll_s)
        override = OVERRIDE if self.override and not quiet else None
        self.admission = {"quiet": quiet, "load": load, "others_cores": others, "waited_s": waited,
                          "bound_cores": self.bound, "override": override}  # fmt: skip
        if not quiet and not self.override:
            cpu = "unknown" if others is None else f"{others:.2f}"
            raise BusyMachine(
                f"machine busy: 1-minute load {load:.2f}, other processes' CPU {cpu} cores, over {self.probe.cores} "
                f"cores (bound {self.bound_per_core} per core = {self.bound:.2f}) after "
                f"waiting {waited:.0f} s. Figures taken now would measure the other load: rerun on a quiet machine, "
                f"or pass --allow-busy to record them marked '{OVERRIDE}'."
            )
        return self.admission

    def time(self, fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, hook: Callable | None = None) -> Figure:
        """`warmup` untimed runs, then `repeats` timed ones."""
        return self._run({"A": fn}, "A" * repeats, warmup, hook)

    def pair(
        self, a: Callable[[], Any], b: Callable[[], Any], pairs: int = 5, warmup: int = 1, hook: Callable | None = None
    ) -> Figure:
        """A and B in `pairs` alternating pairs (AB, BA, ...) after `warmup` untimed runs of each."""
        return self._run({"A": a, "B": b}, "".join("AB" if i % 2 == 0 else "BA" for i in range(pairs)), warmup, hook)

    def _run(self, fns: dict[str, Callable[[], Any]], order: str, warmup: int, hook: Callable | None) -> Figure:
        """Time `fns` in `order`; `hook(side, run)` wraps each timed run (memory tracking, device sync)."""
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        seconds: dict[str, list[float]] = {side.lower(): [] for side in fns}
        first = self.probe.sample()
        for side in order:
            began = self.probe.clock()
            (hook or _call)(side.lower(), fns[side])
            seconds[side.lower()].append(self.probe.clock() - began)
        last = self.probe.sample()
        # too short a window to read others' CPU use: idle to fill it, unless the override has voided it already
        if not self.admission.get("override") and last.wall - first.wall < MIN_WINDOW_S:
            self.sleep(MIN_WINDOW_S - (last.wall - first.wall))
            last = self.probe.sample()
        return Figure(seconds, order, others := others_cores(first, last), (first.load, last.load),
                      self._why_void(others))  # fmt: skip

    def _why_void(self, others: float | None) -> str | None:
        if self.admission.get("override"):
            return OVERRIDE
        if not self.admission:
            return "the machine was not checked before measuring (Harness.admit was not called)"
        if others is not None and others > self.bound:
            return f"other processes used {others:.2f} cores while it ran (bound {self.bound:.2f})"
        return None


def _call(_side: str, fn: Callable[[], Any]) -> None:
    fn()


def cpu_flags() -> dict[str, bool]:
    """Whether the CPU has the instructions that decide bf16 speed: AVX-512, AVX-512 BF16, AMX (Linux /proc/cpuinfo)."""
    try:
        text = (PROC / "cpuinfo").read_text()
    except OSError:
        text = ""
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "amx_tile": "amx_tile" in flags,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The harness's options, the same in `cafe bench` and every script in benchmarks/."""
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help=f"measure even on a busy machine; every figure is then recorded as '{OVERRIDE}'",
    )
    parser.add_argument(
        "--wait", type=float, default=120.0, help="seconds to wait for a quiet machine before refusing (default 120)"
    )


def from_arguments(args: argparse.Namespace) -> Harness:
    """A harness from the options of `add_arguments`."""
    return Harness(wait_s=args.wait, override=args.allow_busy)
