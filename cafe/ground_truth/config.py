"""Parameters of the demo's ground truth (params.yaml `ground_truth:`): how planted causes become patch masks,
and the thresholds that label a target's interventional truth (single cause, AND, OR, none)."""

from __future__ import annotations

from dataclasses import dataclass

from cafe.errors import CafeError


@dataclass(frozen=True)
class GroundTruthConfig:
    """How causes become patch masks, how counterfactual effects become labels, and how they are summarised."""

    patch_overlap: float = 0.25  # a patch is in an object if at least this share of its pixels are
    kind_purity: float = 0.8  # a kind is a feature's cause if it is planted in this share of its top images
    min_effect: float = 0.5  # removing all causal objects must take this share of z away, else label "none"
    suffices: float = 0.5  # a part alone "suffices" if it restores this share of the total effect
    bootstrap: int = 1000  # resamples of targets for the confidence intervals
    batch_size: int = 64  # counterfactual images per truncated forward

    def __post_init__(self) -> None:
        for name in ("patch_overlap", "kind_purity", "min_effect", "suffices"):
            if not 0 < getattr(self, name) <= 1:
                raise CafeError(f"params: ground_truth.{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("bootstrap", "batch_size"):
            if getattr(self, name) < 1:
                raise CafeError(f"params: ground_truth.{name} must be >= 1, got {getattr(self, name)}")
