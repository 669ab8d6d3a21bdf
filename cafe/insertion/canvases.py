"""Insertion canvases by name (params `insertion.canvases`): the image a curve starts from, before any patch of
the original is inserted. Adding one is a function and a line in `CANVASES`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from cafe.errors import CafeError

if TYPE_CHECKING:  # torch loads only when a canvas is made (fig3 and params validation read the names alone)
    import torch

    from cafe.backbone.tower import Backbone

Canvas = Callable[["torch.Tensor", "Backbone", float], "torch.Tensor"]  # (images01, backbone, blur_sigma) -> canvas


def mean_canvas(images: torch.Tensor, backbone: Backbone, blur_sigma: float) -> torch.Tensor:
    """The dataset's mean colour everywhere: zero after normalising, the information-free input."""
    return backbone.mean.to(images.device).expand_as(images).clone()


def blur_canvas(images: torch.Tensor, backbone: Backbone, blur_sigma: float) -> torch.Tensor:
    """A Gaussian-blurred copy (sigma in patch widths): keeps colours and layout, removes patch detail."""
    from torchvision.transforms.functional import gaussian_blur

    sigma = blur_sigma * backbone.patch_size
    size = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(images.shape[-2:]) - 1) + 1)  # reflect padding must fit
    return gaussian_blur(images, [size, size], [sigma, sigma])


CANVASES: dict[str, Canvas] = {"mean": mean_canvas, "blur": blur_canvas}


def make_canvas(kind: str, images: torch.Tensor, backbone: Backbone, blur_sigma: float) -> torch.Tensor:
    """The canvas called `kind` for a batch of images in [0, 1], or an error listing the known canvases."""
    if kind not in CANVASES:
        raise CafeError(f"insertion: unknown canvas {kind!r}; known: {sorted(CANVASES)}")
    return CANVASES[kind](images, backbone, blur_sigma)
