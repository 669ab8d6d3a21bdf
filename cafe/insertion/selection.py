"""Which targets an insertion test uses (clearly active, a seeded nested subset), and the score maps that rank
their patches."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from cafe.io.features import FeatureFile


@dataclass(frozen=True)
class Targets:
    """Parallel arrays, one entry per target (feature row n, rank k of its top images)."""

    row: np.ndarray
    rank: np.ndarray
    feature: np.ndarray
    image: np.ndarray
    token: np.ndarray
    value: np.ndarray
    max_value: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def take(self, index: np.ndarray | slice) -> Targets:
        """The targets at `index`."""
        return Targets(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def select_targets(ff: FeatureFile, min_activation: float) -> Targets:
    """Targets that exist and are clearly active: value >= min_activation x the feature's max (and > 0)."""
    threshold = min_activation * ff.max_value[:, None]
    row, rank = np.nonzero((ff.image >= 0) & (ff.value > 0) & (ff.value >= threshold))
    return Targets(
        row, rank, ff.feature[row], ff.image[row, rank], ff.token[row, rank], ff.value[row, rank], ff.max_value[row]
    )


def sample_targets(targets: Targets, n: int | None, layer: int) -> Targets:
    """The first n targets of a seeded shuffle (all if n is None): nested, so the greedy subset lies inside the
    tested one."""
    if n is None:
        return targets
    order = np.random.default_rng([layer]).permutation(len(targets))
    return targets.take(np.sort(order[:n]))


def activation_scores(ff: FeatureFile, targets: Targets) -> np.ndarray:
    """The feature's activation over patch tokens (CLS and registers dropped), (C, P): the naive baseline ranking."""
    return ff.act_map[targets.row, targets.rank, ff.layout.patches]


def erf_scores(maps: np.ndarray, targets: Targets) -> np.ndarray:
    """The targets' ERF maps flattened row-major to (C, P), like the patch tokens."""
    return maps[targets.row, targets.rank].reshape(len(targets), maps.shape[-2] * maps.shape[-1])  # also when empty
