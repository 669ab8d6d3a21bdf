"""The token layout every step shares: CLS first, then the patch grid row-major (see `cafe.backbone`).

Kept free of heavy imports, so that steps that only read files (sheets, Fig 5, ground truth) do not load
torch, OpenCLIP or captum."""

from __future__ import annotations

from typing import TypeVar

Array = TypeVar("Array")  # a numpy array or a torch tensor: only slicing and reshape are used


def token_grid(per_token: Array, grid: int) -> Array:
    """Values over tokens (..., 1 + grid^2) -> the patch grid (..., grid, grid), CLS dropped."""
    return per_token[..., 1:].reshape(*per_token.shape[:-1], grid, grid)
