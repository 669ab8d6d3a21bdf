"""Which images the pipeline sees (params.yaml `data:`), without pandas: `cafe.params` reads it as the DAG loads."""

from __future__ import annotations

from dataclasses import dataclass

from cafe.config import DEMO_IMAGES
from cafe.errors import CafeError

BAD_IMAGES = ("error", "skip")


@dataclass(frozen=True)
class DataConfig:
    """Which images the pipeline sees (params.yaml `data:`)."""

    images: str = DEMO_IMAGES
    n_train: int = 1600  # 0 when the SAEs are imported (sae.source): no train tokens are extracted
    n_analysis: int = 240
    seed: int = 0
    bad_images: str = "error"  # error: stop and list every broken image; skip: leave them out, listed

    def __post_init__(self) -> None:
        if self.n_analysis < 1 or self.n_train < 0:
            raise CafeError(
                f"params: data.n_analysis must be >= 1 and n_train >= 0, got {self.n_analysis} and {self.n_train}"
            )
        if self.bad_images not in BAD_IMAGES:
            raise CafeError(f"params: data.bad_images must be one of {BAD_IMAGES}, got {self.bad_images!r}")
