"""The token layout every step shares: CLS first, then the patch grid row-major (see `cafe.backbone`).

Kept free of heavy imports, so that steps that only read files (sheets, Fig 5, ground truth) do not load
torch, OpenCLIP or captum."""

from __future__ import annotations

from typing import TypeVar

Array = TypeVar("Array")  # a numpy array or a torch tensor: only slicing and reshape are used


POSITIONS = ("all", "patches", "cls")  # which tokens an SAE was trained on


def position_mask(n_tokens: int, positions: str) -> list[bool]:
    """Which of a layer's tokens belong to `positions` (all, patches or cls), in today's layout (CLS at 0, then the
    patches). The one place that knows the layout's positions: a tower with registers or no CLS changes only this."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, not {positions!r}")
    return [positions == "all" or (token == 0) == (positions == "cls") for token in range(n_tokens)]


def token_grid(per_token: Array, grid: int) -> Array:
    """Values over tokens (..., 1 + grid^2) -> the patch grid (..., grid, grid), CLS dropped."""
    return per_token[..., 1:].reshape(*per_token.shape[:-1], grid, grid)
