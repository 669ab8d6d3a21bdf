"""Interventional truth of one target from its counterfactual activations: each part's Shapley value and a label.

`v` holds z_k(I, t) of every counterfactual scene, indexed by a bitmask of the causal parts present (bit i set:
part i is in the scene; 0 = none of them, 2**n - 1 = the original scene). For two parts A and B the Shapley
value of A is ½[(v(A) − v(∅)) + (v(AB) − v(B))]; the values sum to the total effect v(AB) − v(∅).

Labels (thresholds from `GroundTruthConfig`):
- `none`: the original activation is not positive, or removing every causal part takes less than `min_effect`
  of it away (the feature is driven by something else: distractors, background, position);
- `single`: one part only, with an effect; or of several parts exactly one restores at least `suffices` of the
  total effect on its own;
- `AND`: no part alone restores `suffices` of the total effect (each is needed);
- `OR`: every part alone restores at least `suffices` of it (either suffices);
- `mixed`: three or more parts, some sufficing alone and some not (the demo world has at most two).
"""

from __future__ import annotations

from math import factorial

import numpy as np

from cafe.errors import CafeError

LABELS = ("single", "AND", "OR", "none", "mixed")


def n_parts(v: np.ndarray) -> int:
    """Number of parts whose subsets `v` covers (len(v) must be a power of two)."""
    n = len(v).bit_length() - 1
    if n < 1 or len(v) != 2**n:
        raise CafeError(f"counterfactual values must cover all 2**n subsets of n >= 1 parts, got {len(v)} values")
    return n


def shapley_values(v: np.ndarray) -> np.ndarray:
    """Exact Shapley value of every part, (n,), from v over all 2**n subsets (bitmask index)."""
    v = np.asarray(v, dtype=np.float64)
    n = n_parts(v)
    phi = np.zeros(n)
    for i in range(n):
        bit = 1 << i
        for subset in range(2**n):
            if not subset & bit:
                size = bin(subset).count("1")
                weight = factorial(size) * factorial(n - size - 1) / factorial(n)
                phi[i] += weight * (v[subset | bit] - v[subset])
    return phi


def shapley_shares(phi: np.ndarray) -> np.ndarray:
    """Each part's share of the positive Shapley mass (negative effects count as none); NaN if none is positive."""
    positive = np.clip(phi, 0, None)
    total = positive.sum()
    return positive / total if total > 0 else np.full(len(phi), np.nan)


def alone(v: np.ndarray) -> np.ndarray:
    """Share of the total effect each part restores on its own: (v({i}) − v(∅)) / (v(all) − v(∅))."""
    v = np.asarray(v, dtype=np.float64)
    n = n_parts(v)
    total = v[-1] - v[0]
    singles = v[[1 << i for i in range(n)]]
    return (singles - v[0]) / total if total > 0 else np.full(n, np.nan)


def cause_label(v: np.ndarray, min_effect: float, suffices: float) -> str:
    """single / AND / OR / none / mixed for one target (rules: module docstring)."""
    v = np.asarray(v, dtype=np.float64)
    n = n_parts(v)
    full, total = v[-1], v[-1] - v[0]
    if not full > 0 or total < min_effect * full:
        return "none"
    if n == 1:
        return "single"
    enough = int((alone(v) >= suffices).sum())
    if enough == 0:
        return "AND"
    if enough == n:
        return "OR"
    return "single" if enough == 1 else "mixed"
