"""The demo's params (params.yaml `demo:`): the world's size and seed, and the training of its tower. No torch,
no drawing library: `cafe.params` reads these as the DAG loads."""

from __future__ import annotations

from dataclasses import dataclass

from cafe.errors import CafeError


@dataclass(frozen=True)
class DemoConfig:
    """Size and seed of the demo world (params.yaml `demo:`, without its `backbone:` sub-section)."""

    n_images: int = 2400
    image_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise CafeError(f"params: demo.n_images must be >= 1, got {self.n_images}")
        if self.image_size < 32:
            raise CafeError(f"params: demo.image_size must be >= 32 (objects need room), got {self.image_size}")


@dataclass(frozen=True)
class DemoBackboneConfig:
    """Training of the demo tower (params.yaml `demo.backbone:`)."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.002
    weight_decay: float = 0.05
    holdout: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise CafeError(
                f"params: demo.backbone.epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if not 0 < self.holdout < 1:
            raise CafeError(f"params: demo.backbone.holdout must be in (0, 1), got {self.holdout}")
