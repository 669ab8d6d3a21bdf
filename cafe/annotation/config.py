"""Parameters of the annotation step (params.yaml `annotation:`), shared by sheets, galleries and Fig 5."""

from __future__ import annotations

from dataclasses import dataclass

from cafe.errors import CafeError


@dataclass(frozen=True)
class AnnotationConfig:
    """How many features a person reviews per layer, how many images each gallery shows, and the score cut."""

    n_features: int = 32  # features per layer in the sheets (the paper: 100)
    gallery_k: int = 4  # images per gallery
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.gallery_k < 1:
            raise CafeError(f"params: annotation.n_features and annotation.gallery_k must be >= 1, got {self}")
        if not 0.0 <= self.threshold <= 1.0:
            raise CafeError(f"params: annotation.threshold must be in [0, 1] (the score's range), got {self.threshold}")
