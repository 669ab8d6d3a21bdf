"""The measuring harness: admission of a quiet machine, repeats and their statistics, alternating A/B pairs and void
figures. Ordering and statistics run on a fake clock; the busy-machine cases on real busy loops. No wall-clock time is
asserted anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cafe.bench.harness import OVERRIDE, BusyMachine, Harness, Sample, summary


class FakeMachine:
    """A clock and CPU counters that move only when told: `run(seconds)` is our work, `others` other processes'."""

    cores = 2

    def __init__(self, load: float = 0.0, others: float = 0.0):
        self.now = self.machine = self.own = 0.0
        self.load, self.others = load, others

    def clock(self) -> float:
        return self.now

    def run(self, seconds: float, own_cores: float = 1.0) -> None:
        self.now += seconds
        self.own += seconds * own_cores
        self.machine += seconds * (own_cores + self.others)

    def sleep(self, seconds: float) -> None:
        self.run(seconds, own_cores=0.0)

    def sample(self) -> Sample:
        return Sample(self.now, self.machine, self.own, self.load)


def harness(machine: FakeMachine, **kwargs) -> Harness:
    return Harness(probe=machine, sleep=machine.sleep, **kwargs)


def admitted(machine: FakeMachine, **kwargs) -> Harness:
    h = harness(machine, **kwargs)
    h.admit()
    return h


def test_summary_gives_min_median_max_of_the_runs():
    assert summary([3.0, 1.0, 2.0, 5.0, 4.0]) == {"min": 1.0, "median": 3.0, "max": 5.0, "runs": [3, 1, 2, 5, 4]}
    assert summary([2.0, 4.0])["median"] == 3.0


@pytest.mark.parametrize("repeats", [1, 5, 7])
def test_time_repeats_after_warmup_and_reports_the_spread(repeats):
    machine = FakeMachine()
    durations = iter([9.0, *[1.0 + (i * 7 % repeats) for i in range(repeats)]])  # the 9 s warm-up is not counted
    figure = admitted(machine).time(lambda: machine.run(next(durations)), repeats=repeats, warmup=1)
    expected = [1.0 + (i * 7 % repeats) for i in range(repeats)]
    assert figure.seconds["a"] == expected and figure.order == "A" * repeats
    assert figure.stats() == summary(expected) and figure.void is None


@pytest.mark.parametrize("pairs", [5, 6])
def test_pair_alternates_a_and_b_and_takes_the_ratio_per_adjacent_pair(pairs):
    machine, calls = FakeMachine(), []

    def side(name: str, seconds: float):
        return lambda: (calls.append(name), machine.run(seconds))

    figure = admitted(machine).pair(side("a", 1.0), side("b", 4.0), pairs=pairs, warmup=2)
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up, untimed
    timed = "".join(calls[4:]).upper()
    assert timed == figure.order and timed == "".join("AB" if i % 2 == 0 else "BA" for i in range(pairs))
    assert figure.ratio() == summary([0.25] * pairs)
    assert len(figure.seconds["a"]) == len(figure.seconds["b"]) == pairs


def test_a_drift_over_the_run_moves_each_pair_ratio_both_ways():
    """Every run takes 5 % longer than the one before: AB pairs read low, BA pairs high; the truth lies between."""
    machine, runs = FakeMachine(), []

    def side(seconds: float):
        def run():
            machine.run(seconds * (1 + 0.05 * len(runs)))
            runs.append(seconds)

        return run

    figure = admitted(machine).pair(side(1.0), side(2.0), pairs=6, warmup=0)
    ratios = figure.ratio()["runs"]
    assert all(r < 0.5 for r in ratios[0::2]) and all(r > 0.5 for r in ratios[1::2])
    assert figure.ratio()["min"] < 0.5 < figure.ratio()["max"]


def test_a_busy_machine_is_waited_for_then_refused_with_what_to_do():
    machine = FakeMachine(load=5.0)
    with pytest.raises(BusyMachine, match=r"load 5\.00.*bound 0\.5 per core.*--allow-busy"):
        harness(machine, wait_s=30.0, poll_s=5.0).admit()
    assert machine.now >= 30.0  # it waited (fake time)


def test_a_machine_that_quietens_within_the_wait_is_admitted():
    machine = FakeMachine(load=5.0)
    h = harness(machine, wait_s=60.0, poll_s=5.0)
    original = machine.sleep

    def sleep(seconds: float) -> None:
        original(seconds)
        machine.load = 0.2 if machine.now > 20 else 5.0

    h.sleep = sleep
    admission = h.admit()
    assert admission["quiet"] and admission["override"] is None and 20 < admission["waited_s"] < 60


def test_other_processes_cpu_use_refuses_even_under_a_low_load_average():
    """The 1-minute average lags; other processes' CPU time over the poll window counts too."""
    with pytest.raises(BusyMachine, match="other processes' CPU 1.50 cores"):
        harness(FakeMachine(load=0.1, others=1.5), wait_s=0).admit()


def test_the_override_measures_but_voids_every_figure():
    machine = FakeMachine(load=5.0)
    h = harness(machine, wait_s=0, override=True)
    assert h.admit()["override"] == OVERRIDE
    machine.load = 0.0
    assert h.time(lambda: machine.run(1.0)).void == OVERRIDE
    assert h.pair(lambda: machine.run(1.0), lambda: machine.run(1.0)).record()["void"] == OVERRIDE
    began = machine.now  # a figure already void waits for no window to read others' CPU in (the tests' dry runs)
    assert h.time(lambda: machine.run(0.01), repeats=2, warmup=0).void == OVERRIDE
    assert machine.now - began == pytest.approx(0.02)


def test_the_override_on_a_quiet_machine_changes_nothing():
    machine = FakeMachine()
    h = harness(machine, override=True)
    assert h.admit()["override"] is None and h.time(lambda: machine.run(1.0)).void is None


def test_a_figure_is_void_when_others_load_rises_while_it_runs():
    machine = FakeMachine()
    h = admitted(machine)

    def busy_in_the_middle():
        machine.others = 2.0
        machine.run(1.0)

    figure = h.time(busy_in_the_middle, repeats=3, warmup=0)
    assert "other processes used 2.00 cores" in figure.void
    machine.others = 0.9  # under the bound of 0.5 x 2 cores
    assert h.time(lambda: machine.run(1.0), repeats=3, warmup=0).void is None


def test_a_short_figure_is_read_over_a_window_long_enough_to_see_the_load():
    machine = FakeMachine(others=1.5)
    h = harness(machine)
    h.admission = {"quiet": True, "override": None}  # admitted while quiet; the load came afterwards
    figure = h.time(lambda: machine.run(0.001), repeats=5, warmup=0)
    assert figure.void and figure.others_cores == pytest.approx(1.5)


def test_a_figure_without_admission_does_not_hold():
    machine = FakeMachine()
    assert "not checked" in harness(machine).time(lambda: machine.run(1.0)).void


@pytest.fixture
def busy_machine():
    """One busy loop per core plus one, orphaned (not this process's children, like another user's jobs)."""
    loop = f"{sys.executable} -c 'while True: pass'"
    script = "; ".join([f"{loop} >/dev/null 2>&1 & echo $!"] * ((os.cpu_count() or 1) + 1))
    pids = [int(p) for p in subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout.split()]
    yield pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads other processes' CPU use from Linux /proc")
def test_busy_loops_in_other_processes_make_it_refuse_and_void(busy_machine):
    with pytest.raises(BusyMachine, match="machine busy"):
        Harness(wait_s=0, poll_s=1.0).admit()
    h = Harness(wait_s=0, override=True)
    h.admit()
    h.override, h.admission = False, {"quiet": True, "override": None}  # as if admitted before the loops started
    figure = h.time(lambda: sum(range(10_000)), repeats=5, warmup=0)
    assert figure.void and "other processes used" in figure.void, figure.record()
