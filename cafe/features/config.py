"""Which features and how many top images each (params.yaml `features:`), torch-free: `cafe.params` reads them as
the DAG loads."""

from __future__ import annotations

from dataclasses import dataclass

from cafe.errors import CafeError


@dataclass(frozen=True)
class FeaturesConfig:
    """Which features and how many top images each (params.yaml `features:`)."""

    n_features: int = 32  # the first N features of each SAE (the paper: 100)
    top_k: int = 4  # top activations (distinct images) per feature

    def __post_init__(self) -> None:
        for name in ("n_features", "top_k"):
            if getattr(self, name) < 1:
                raise CafeError(f"params: features.{name} must be >= 1, got {getattr(self, name)}")
