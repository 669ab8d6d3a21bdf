"""Small statistics for comparing explanation methods: trapezoid AUC, bootstrap CIs, paired Wilcoxon tests with
Holm's correction, Spearman correlation, and agreement of two rankings."""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats


def trapezoid_auc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Area under y(x) by the trapezoid rule along the last axis; x spans [0, 1], so the AUC does not grow with S."""
    return np.trapezoid(y, x, axis=-1)


def _mean(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1)


def bootstrap_ci(
    values: np.ndarray,
    resamples: int,
    statistic: Callable[[np.ndarray], np.ndarray] = _mean,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of statistic over rows of `values`; statistic maps (B, n, ...) -> (B,)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = statistic(values[rng.integers(0, len(values), size=(resamples, len(values)))])
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(draws, [tail, 100 - tail])
    return float(lo), float(hi)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), NaN left as NaN and outside the family."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (1.0 when they never differ, NaN without pairs)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diff) == 0:
        return float("nan")
    if np.all(diff == 0):
        return 1.0
    return float(stats.wilcoxon(diff).pvalue)


def signed_rank_balance(diff: np.ndarray) -> float:
    """R+ - R- of the Wilcoxon signed-rank statistic over the non-zero differences: the direction the test saw
    (positive: the first method tends to be higher). Unlike the mean, one outlier cannot flip it."""
    diff = diff[diff != 0]
    ranks = stats.rankdata(np.abs(diff))
    return float(ranks[diff > 0].sum() - ranks[diff < 0].sum())


def paired_tests(wide: pd.DataFrame, higher_is_better: bool, alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of columns (methods) of `wide` (rows = paired units) by Wilcoxon, Holm-corrected over the pairs.

    `winner` is the better method, by the signed ranks the test used, where the adjusted p is below alpha, else
    'none'; `mean_diff` is descriptive only.
    """
    rows = []
    for a, b in combinations(wide.columns, 2):
        both = wide[[a, b]].dropna()
        diff = (both[a] - both[b]).to_numpy()
        rows.append(
            {
                "a": a,
                "b": b,
                "n": len(both),
                "mean_diff": float(diff.mean()) if len(both) else float("nan"),
                "rank_balance": signed_rank_balance(diff),
                "p": wilcoxon_p(both[a], both[b]),
            }
        )
    out = pd.DataFrame(rows, columns=["a", "b", "n", "mean_diff", "rank_balance", "p"])
    out["p_holm"] = holm(out["p"].to_numpy())
    a_better = (out["rank_balance"] > 0) == higher_is_better
    out["winner"] = np.where(out["p_holm"] < alpha, np.where(a_better, out["a"], out["b"]), "none")
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of a and b along their last axis, one value per leading index (ties get average ranks;
    a constant row gives NaN)."""
    ra, rb = stats.rankdata(a, axis=-1), stats.rankdata(b, axis=-1)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(-1) / np.sqrt((ra**2).sum(-1) * (rb**2).sum(-1))


def rank_agreement(first: dict[str, float], second: dict[str, float]) -> dict:
    """Kendall's tau between two scorings of the same methods, and the pairs whose order flips."""
    names = sorted(set(first) & set(second))
    flipped = [
        [a, b] for a, b in combinations(names, 2) if np.sign(first[a] - first[b]) * np.sign(second[a] - second[b]) < 0
    ]
    tau = (
        stats.kendalltau([first[n] for n in names], [second[n] for n in names]).statistic
        if len(names) > 1
        else float("nan")
    )
    return {"kendall_tau": float(tau), "flipped": flipped}
