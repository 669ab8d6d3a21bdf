"""What every stage of one model's bench shares: its profile, the tower and SAE, the timer and a scratch folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cafe.backbone.tower import Backbone
from cafe.bench.flops import Architecture
from cafe.bench.harness import summary
from cafe.bench.measure import Timer, Timing, stage_record
from cafe.bench.profiles import Profile
from cafe.sae.model import MatryoshkaSAE


@dataclass(frozen=True)
class Stage:
    """One record to measure: what it times, its unit and count, the callable, its FLOPs and settings."""

    what: str
    unit: str
    count: float
    fn: Callable[[], Any]
    flops: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """One model's bench: `measure` times a stage and returns its record, `compare` two stages in alternating pairs."""

    profile: Profile
    backbone: Backbone
    sae: MatryoshkaSAE
    timer: Timer
    workdir: Path
    precision: str = "fp32"  # what SAE training runs in; the other stages run in the caller's precision_scope

    @property
    def arch(self) -> Architecture:
        return Architecture.of(self.backbone)

    def layer(self, layer: int) -> int:
        """A profile's layer, 0 meaning the last block."""
        return layer or self.backbone.depth

    def record(
        self, what: str, unit: str, count: float, timing: Timing, flops: float, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A stage record from a timing taken elsewhere (a subprocess)."""
        return stage_record(what, unit, count, timing, flops, params)

    def measure(
        self,
        what: str,
        unit: str,
        count: float,
        fn: Callable[[], Any],
        flops: float,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Time `fn` with the model's timer and return its record."""
        return self.record(what, unit, count, self.timer.measure(fn), flops, params)

    def compare(self, ours_name: str, ours: Stage, base_name: str, base: Stage) -> dict[str, dict[str, Any]]:
        """Both records from alternating pairs; the baseline's record carries `versus`: the per-pair speed-up of
        ours (throughput over the baseline's)."""
        return self.paired(ours_name, ours, base_name, base, *self.timer.pair(ours.fn, base.fn))

    def paired(
        self,
        ours_name: str,
        ours: Stage,
        base_name: str,
        base: Stage,
        t_ours: Timing,
        t_base: Timing,
        ratio: dict[str, Any],
    ) -> dict[str, dict[str, Any]]:
        """The records of `compare` from timings taken in alternating pairs (Timer.pair)."""
        records = {
            name: self.record(s.what, s.unit, s.count, t, s.flops, dict(s.params))
            for name, s, t in ((ours_name, ours, t_ours), (base_name, base, t_base))
        }
        per_pair = [ours.count / base.count / r for r in ratio["runs"]]  # seconds ratio -> throughput ratio
        records[base_name]["versus"] = {
            "ours": ours_name,
            "speedup": summary(per_pair),
            "order": ratio["order"],
            "void": ratio["void"],
        }
        return records
