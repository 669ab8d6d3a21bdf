"""An automatic non-locality score from activation and ERF maps, and its agreement with human labels.

The paper flags a feature as non-local when its top-activation patches are spatially inconsistent with their ERF,
and leaves automatic criteria as future work. Per target we measure two inconsistencies, each in [0, 1]:

- `outside`: share of the ERF's positive mass outside the top-activated patches (at >= ACTIVE_SHARE of the image's
  peak activation and among its top ACTIVE_MAX share of patches, so a diffuse map does not cover everything), and
  outside the peak's TOLERANCE neighbourhood (an ERF spilling onto the peak's neighbours still counts as local);
- `distance`: distance from the activation peak to the ERF's centre of mass, over half the grid's diagonal.

A target with no positive patch activation (a CLS-only firing) has no spatial anchor: both are 1. The score is
their mean, averaged over the feature's targets. It suggests; the person decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the Fig 5 step scores sheets, not layer files: it needs no image code
    from cafe.annotation.layer_maps import LayerTargets

ACTIVE_SHARE = 0.5
ACTIVE_MAX = 0.1
TOLERANCE = 1


@dataclass(frozen=True)
class MapScores:
    """Per-target (or per-feature) inconsistencies between where a feature fires and what caused it."""

    outside: np.ndarray
    distance: np.ndarray

    @property
    def score(self) -> np.ndarray:
        """The combined non-locality score in [0, 1]."""
        return (self.outside + self.distance) / 2


def evidence(erf: np.ndarray) -> np.ndarray:
    """ERF maps (..., g, g) as mass summing to 1: the positive part, or |ERF| where nothing is positive."""
    positive = np.clip(erf, 0, None)
    mass = np.where(positive.sum(axis=(-2, -1), keepdims=True) > 0, positive, np.abs(erf))
    total = mass.sum(axis=(-2, -1), keepdims=True)
    return np.divide(mass, total, out=np.full_like(mass, 1.0 / (erf.shape[-1] * erf.shape[-2])), where=total > 0)


def peak(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each map's maximum, over the last two axes."""
    flat = maps.reshape(*maps.shape[:-2], -1).argmax(axis=-1)
    return np.divmod(flat, maps.shape[-1])


def centre_of_mass(mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) centre of mass of maps that sum to 1."""
    rows, cols = np.indices(mass.shape[-2:])
    return (mass * rows).sum(axis=(-2, -1)), (mass * cols).sum(axis=(-2, -1))


def top_patches(act: np.ndarray) -> np.ndarray:
    """Mask of each map's top-activated patches: >= ACTIVE_SHARE of its peak and among its top ACTIVE_MAX share,
    plus the peak's TOLERANCE neighbourhood (an ERF spilling onto neighbours of the peak is still local)."""
    flat = act.reshape(*act.shape[:-2], -1)
    keep = max(1, int(np.ceil(ACTIVE_MAX * flat.shape[-1])))
    ranked = np.zeros(flat.shape, bool)
    np.put_along_axis(ranked, np.argsort(-flat, axis=-1, kind="stable")[..., :keep], True, axis=-1)
    act_max = flat.max(axis=-1)
    strong = (act >= ACTIVE_SHARE * act_max[..., None, None]) & ranked.reshape(act.shape)
    peak_row, peak_col = peak(act)
    rows, cols = np.indices(act.shape[-2:])
    row_gap, col_gap = np.abs(rows - peak_row[..., None, None]), np.abs(cols - peak_col[..., None, None])
    near = (row_gap <= TOLERANCE) & (col_gap <= TOLERANCE)
    return (strong | near) & (act_max > 0)[..., None, None]


def map_scores(act: np.ndarray, erf: np.ndarray) -> MapScores:
    """Score activation maps against ERF maps of the same targets, both (..., g, g) over patches."""
    grid = act.shape[-1]
    mass = evidence(erf)
    anchored = act.max(axis=(-2, -1)) > 0
    outside = np.clip(1.0 - (mass * top_patches(act)).sum(axis=(-2, -1)), 0, 1)
    peak_row, peak_col = peak(act)
    com_row, com_col = centre_of_mass(mass)
    half_diagonal = max(grid - 1, 1) * np.sqrt(2) / 2
    distance = np.minimum(np.hypot(peak_row - com_row, peak_col - com_col) / half_diagonal, 1.0)
    return MapScores(np.where(anchored, outside, 1.0), np.where(anchored, distance, 1.0))


def target_scores(targets: LayerTargets) -> MapScores:
    """Per-target scores (N, K) of a layer; targets without an ERF get a meaningless value, masked later."""
    return map_scores(targets.act, np.nan_to_num(targets.erf))


def feature_scores(per_target: MapScores, valid: np.ndarray) -> MapScores:
    """Per-feature means over the valid targets (N, K) of each row (NaN for a feature without any)."""
    count = valid.sum(axis=1)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.divide((values * valid).sum(axis=1), count, out=np.full(count.shape, np.nan), where=count > 0)

    return MapScores(mean(per_target.outside), mean(per_target.distance))


def agreement(human: np.ndarray, auto: np.ndarray) -> dict[str, float | int | None]:
    """Cohen's kappa, precision and recall of automatic yes/no against human yes/no (None where undefined)."""
    human, auto = np.asarray(human, bool), np.asarray(auto, bool)
    n = int(human.size)
    if n == 0:
        return {"n": 0, "kappa": None, "precision": None, "recall": None}
    hits = int((human & auto).sum())
    observed = float((human == auto).mean())
    chance = float(human.mean() * auto.mean() + (1 - human.mean()) * (1 - auto.mean()))
    return {
        "n": n,
        "kappa": None if chance >= 1 else round((observed - chance) / (1 - chance), 4),
        "precision": round(hits / auto.sum(), 4) if auto.any() else None,
        "recall": round(hits / human.sum(), 4) if human.any() else None,
    }
