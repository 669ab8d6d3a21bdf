"""Patch orders: rank a score map with seeded random tie-breaks, and the grid-aligned step schedule.

SAE activation maps are sparse, so most patches tie (at zero); a stable sort would insert those ties
top-left first. Every ranking here breaks ties by a random permutation keyed on (seed, layer, feature,
rank), so all methods share the same tie-breaks for a target (common random numbers for paired tests)
and `random` is exactly the tie-break order of an all-equal map.
"""

from __future__ import annotations

import numpy as np


def target_rng(seed: int, layer: int, feature: int, rank: int) -> np.random.Generator:
    """A generator that depends only on the seed and the target, not on processing order."""
    return np.random.default_rng([seed, layer, feature, rank])


def rank_patches(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Patch indices from most to least relevant; equal scores come in random order."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    perm = rng.permutation(scores.size)
    return perm[np.argsort(-scores[perm], kind="stable")]


def seeded_orders(scores: np.ndarray, seeds: int, layer: int, feature: int, rank: int) -> np.ndarray:
    """Orders (seeds, P) of one target's score map, one tie-break per seed."""
    return np.stack([rank_patches(scores, target_rng(s, layer, feature, rank)) for s in range(seeds)])


def step_counts(n_patches: int, steps: int) -> np.ndarray:
    """Patches inserted after each of steps 0..S (grid-aligned, as even as the grid allows)."""
    return np.rint(np.linspace(0, n_patches, steps + 1)).astype(int)


def positions(orders: np.ndarray) -> np.ndarray:
    """For orders (B, P), the position of each patch in its order (B, P)."""
    pos = np.empty_like(orders)
    rows = np.arange(orders.shape[0])[:, None]
    pos[rows, orders] = np.arange(orders.shape[1])[None, :]
    return pos
