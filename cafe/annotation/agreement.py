"""Several annotators: majority vote per feature, and how much people agree (Krippendorff's alpha, Fleiss' kappa),
with bootstrap confidence intervals over features.

A label is yes/no; `unsure` and blank are no label. A feature's majority is yes or no when one side has more
labels, a tie when both have as many; ties and features nobody labelled are counted, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

BOOTSTRAP = 1000
SEED = 0


def label_matrix(features: pd.Series, answers: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Features (rows, the sheet's order) x annotators: 1.0 non-local, 0.0 local, NaN no label."""
    columns = {}
    for name, human in answers.items():
        given = human[human["non_local"].notna()]
        columns[name] = given.set_index("feature")["non_local"].astype(float).reindex(features.to_numpy())
    return pd.DataFrame(columns, index=pd.Index(features.to_numpy(), name="feature"), dtype=float)


def majority(matrix: pd.DataFrame) -> pd.DataFrame:
    """Per feature: labels given, yes and no counts, the majority (True/False, None on a tie or without labels)."""
    n_yes, n_no = (matrix == 1).sum(axis=1), (matrix == 0).sum(axis=1)
    vote = pd.Series(np.where(n_yes > n_no, True, np.where(n_no > n_yes, False, None)), index=matrix.index)
    return pd.DataFrame({
        "n_labels": n_yes + n_no,
        "n_yes": n_yes,
        "n_no": n_no,
        "majority": vote.astype(object),
        "tie": (n_yes == n_no) & (n_yes > 0),
    })  # fmt: skip


def krippendorff_alpha(matrix: np.ndarray) -> float | None:
    """Krippendorff's alpha for nominal values, units (rows) x coders (columns), NaN = missing; units with fewer
    than two values do not count. None when undefined (fewer than two values in all, or only one category)."""
    matrix = np.asarray(matrix, float)
    categories = np.unique(matrix[~np.isnan(matrix)])
    counts = (matrix[..., None] == categories).sum(axis=1).astype(float)  # units x categories
    paired = counts.sum(axis=1)
    counts, paired = counts[paired >= 2], paired[paired >= 2]
    if not len(counts):
        return None
    weighted = counts / (paired - 1)[:, None]
    coincidence = weighted.T @ counts - np.diag(weighted.sum(axis=0))
    totals = coincidence.sum(axis=1)
    n = totals.sum()
    expected = (np.outer(totals, totals).sum() - (totals**2).sum()) / (n - 1)
    if expected == 0:
        return None
    observed = coincidence.sum() - np.trace(coincidence)
    return float(1 - observed / expected)


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa from items x categories counts, every item rated by the same number (>= 2) of raters; None
    when undefined (no items, or every rating in one category)."""
    counts = np.asarray(counts, float)
    if counts.size == 0:
        return None
    raters = counts.sum(axis=1)
    if raters.min() < 2 or not np.all(raters == raters[0]):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of raters for every item")
    m = raters[0]
    share = counts.sum(axis=0) / counts.sum()
    per_item = ((counts**2).sum(axis=1) - m) / (m * (m - 1))
    chance = float((share**2).sum())
    if chance >= 1:
        return None
    return float((per_item.mean() - chance) / (1 - chance))


def _binary_counts(matrix: np.ndarray) -> np.ndarray:
    """Items x (no, yes) counts of a 0/1/NaN matrix."""
    return np.stack([(matrix == 0).sum(axis=1), (matrix == 1).sum(axis=1)], axis=1)


def fleiss_complete(matrix: np.ndarray) -> float | None:
    """Fleiss' kappa on the features every annotator labelled (None with fewer than two annotators)."""
    matrix = np.asarray(matrix, float)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        return None
    return fleiss_kappa(_binary_counts(matrix[~np.isnan(matrix).any(axis=1)]))


def bootstrap_ci(
    matrix: np.ndarray, statistic: Callable[[np.ndarray], float | None], n: int = BOOTSTRAP, seed: int = SEED
) -> list[float] | None:
    """95% percentile interval of `statistic` over features resampled with replacement (None if undefined)."""
    matrix = np.asarray(matrix, float)
    if len(matrix) < 2:
        return None
    rng = np.random.default_rng(seed)
    values = [statistic(matrix[rng.integers(0, len(matrix), len(matrix))]) for _ in range(n)]
    values = np.array([v for v in values if v is not None and np.isfinite(v)])
    if len(values) < n // 2:  # mostly undefined: an interval would mislead
        return None
    return [round(float(v), 4) for v in np.percentile(values, [2.5, 97.5])]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def people_agreement(matrix: pd.DataFrame) -> dict:
    """How much annotators agree: alpha over every feature two or more people labelled, Fleiss' kappa over the
    features all labelled, each with its bootstrap CI and the number of features it rests on."""
    values = matrix.to_numpy(float)
    labelled = (~np.isnan(values)).sum(axis=1)
    complete = values[(labelled == values.shape[1])] if values.shape[1] else values[:0]
    return {
        "annotators": list(matrix.columns),
        "krippendorff_alpha": _rounded(krippendorff_alpha(values)),
        "alpha_ci95": bootstrap_ci(values[labelled >= 2], krippendorff_alpha),
        "alpha_n_features": int((labelled >= 2).sum()),
        "fleiss_kappa": _rounded(fleiss_complete(complete)) if len(complete) else None,
        "kappa_ci95": bootstrap_ci(complete, fleiss_complete) if values.shape[1] >= 2 else None,
        "kappa_n_features": len(complete) if values.shape[1] >= 2 else 0,
    }
