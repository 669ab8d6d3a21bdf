"""The one interface every ERF method shares (captum-like): `method.attribute(images01, tokens, features)` gives
one patch-grid map per target; `explain` adds the target's value and what the map leaves unexplained."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from cafe.erf.config import ErfConfig
from cafe.feature_target import FeatureTarget


@dataclass(frozen=True)
class Attribution:
    """Per target b: `maps[b]` (grid, grid), `value[b]` = z_k(I, t), and `absorbed[b]` = the part of the quantity
    the method decomposes (z for LRP and gradient x input, z(I) - z(mean canvas) for IG and KernelSHAP) that is
    not on the patches (NaN where a method decomposes nothing)."""

    maps: torch.Tensor
    value: torch.Tensor
    absorbed: torch.Tensor


class ErfMethod(ABC):
    """An attribution method over a FeatureTarget; subclasses implement `_explain` on normalised pixels."""

    name: ClassVar[str]
    # True where targets of one image in one batch share work (KernelSHAP); `cafe erf` then batches them together
    batch_by_image: ClassVar[bool] = False

    def __init__(self, target: FeatureTarget, config: ErfConfig | None = None):
        self.target, self.config = target, config or ErfConfig()
        self.backbone = target.backbone

    def attribute(self, images01: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """ERF maps (B, grid, grid) of z_{features[b]}(images01[b], tokens[b]); images (B, 3, H, W) in [0, 1]."""
        return self.explain(images01, tokens, features).maps

    def explain(self, images01: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> Attribution:
        """Maps plus the targets' values and the unexplained remainder, one batched pass for all B targets."""
        device = self.backbone.device
        pixels = self.backbone.normalize(images01)
        result = self._explain(pixels, tokens.to(device).long(), features.to(device).long())
        return Attribution(*(t.detach() for t in (result.maps, result.value, result.absorbed)))

    @abstractmethod
    def _explain(self, pixels: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> Attribution:
        """The method proper, on normalised pixels (zeros = the dataset-mean canvas)."""


def patch_sum(pixel_map: torch.Tensor, patch: int) -> torch.Tensor:
    """Sum a per-pixel map (B, C, H, W) over channels and within each patch -> (B, H/patch, W/patch)."""
    b, _, h, w = pixel_map.shape
    return pixel_map.sum(1).view(b, h // patch, patch, w // patch, patch).sum((2, 4))


def nan_like(value: torch.Tensor) -> torch.Tensor:
    """A NaN remainder for methods that decompose nothing."""
    return torch.full_like(value, float("nan"))
