"""What every stage of one model's bench shares: its profile, the tower and SAE, the timer and a scratch folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cafe.backbone import Backbone
from cafe.bench.flops import Architecture
from cafe.bench.measure import Timer, Timing, stage_record
from cafe.bench.profiles import Profile
from cafe.sae import MatryoshkaSAE


@dataclass
class Context:
    """One model's bench: `measure` times a stage and returns its record."""

    profile: Profile
    backbone: Backbone
    sae: MatryoshkaSAE
    timer: Timer
    workdir: Path

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
        return self.record(what, unit, count, self.timer.best(fn), flops, params)
