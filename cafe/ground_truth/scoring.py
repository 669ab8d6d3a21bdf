"""Scores of one patch map against a known causal region.

- `mass_in`: share of the map's positive mass inside the causal patches (1 = all evidence on the cause).
- `hit`: pointing game, 1 if the map's peak patch is a causal patch.
- `weakest_part`: for causes of two or more parts (compositional scenes), the smallest share of positive mass
  on any one part: high only if the map finds every part, not just one.
- `chance`: the share of patches that are causal, what a uniform map (or a random peak) scores on both.
"""

from __future__ import annotations

import numpy as np

NAN = float("nan")


def score_map(values: np.ndarray, parts: list[np.ndarray]) -> dict[str, float]:
    """Score a (grid, grid) map against causal part masks; NaN where the map is missing or has no positive mass."""
    cause = np.logical_or.reduce(parts)
    positive = np.clip(values, 0, None)
    total = positive.sum()
    if not np.isfinite(values).all() or total <= 0:
        return {"mass_in": NAN, "hit": NAN, "weakest_part": NAN}
    shares = [positive[part].sum() / total for part in parts]
    return {
        "mass_in": float(positive[cause].sum() / total),
        "hit": float(cause.flat[int(np.argmax(values))]),
        "weakest_part": float(min(shares)) if len(parts) > 1 else NAN,
    }


def chance(parts: list[np.ndarray]) -> float:
    """Share of causal patches: the expected score of a uniform map."""
    return float(np.logical_or.reduce(parts).mean())
