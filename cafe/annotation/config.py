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
    fig1_per_group: int = 3  # Fig 1: local features shown on top, as many non-local ones below
    fig4_per_layer: int = 2  # Fig 4: non-local features shown per layer

    def __post_init__(self) -> None:
        counts = (self.n_features, self.gallery_k, self.fig1_per_group, self.fig4_per_layer)
        if min(counts) < 1:
            names = "n_features, gallery_k, fig1_per_group, fig4_per_layer"
            raise CafeError(f"params: annotation {names} must be >= 1, got {self}")
        if not 0.0 <= self.threshold <= 1.0:
            raise CafeError(f"params: annotation.threshold must be in [0, 1] (the score's range), got {self.threshold}")
