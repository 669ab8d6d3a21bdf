"""Parameters of the insertion tests (params.yaml `insertion:`) and the columns of the curves tables."""

from __future__ import annotations

from dataclasses import dataclass

from cafe.errors import CafeError
from cafe.insertion.canvases import CANVASES

COLUMNS = [
    "layer",
    "method",
    "canvas",
    "kind",
    "feature",
    "rank",
    "image",
    "token",
    "seed",
    "step",
    "fraction",
    "z",
    "recovery",
]  # the long curves table, one row per curve step


@dataclass(frozen=True)
class InsertionConfig:
    """How patches are inserted, into what, how often, and how results are summarised."""

    canvases: tuple[str, ...] = ("mean", "blur")
    steps: int = 16
    seeds: int = 3
    min_activation: float = 0.1
    greedy_targets: int = 4
    bootstrap: int = 1000
    max_targets: int | None = 64  # clearly active targets tested per layer (seeded subset; None = all)
    blur_sigma: float = 1.0  # Gaussian sigma of the blur canvas, in patch widths
    batch_size: int = 64  # images per truncated forward

    def __post_init__(self) -> None:
        unknown = [c for c in self.canvases if c not in CANVASES]
        if unknown or not self.canvases:
            raise CafeError(
                f"params: insertion.canvases must be a non-empty subset of {list(CANVASES)}, got {list(self.canvases)}"
            )
        for name in ("steps", "seeds", "bootstrap", "batch_size"):
            if getattr(self, name) < 1:
                raise CafeError(f"params: insertion.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_targets is not None and self.max_targets < 1:
            raise CafeError(f"params: insertion.max_targets must be >= 1 or null, got {self.max_targets}")
        if self.greedy_targets < 0:
            raise CafeError(f"params: insertion.greedy_targets must be >= 0, got {self.greedy_targets}")
        if not 0 <= self.min_activation < 1:
            raise CafeError(f"params: insertion.min_activation must be in [0, 1), got {self.min_activation}")
        if self.blur_sigma <= 0:
            raise CafeError(f"params: insertion.blur_sigma must be > 0, got {self.blur_sigma}")
