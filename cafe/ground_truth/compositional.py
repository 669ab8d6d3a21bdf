"""Interventional truth per target, and what ERF maps see of it: part shares, AND vs OR, pointing game.

From the counterfactual activations (`cafe.ground_truth.interventions`) each target gets its parts' Shapley
values and a label (`cafe.ground_truth.shapley`). Each map of the target (the ERF methods', `activation`: the
feature's own activation over patches, `uniform`: a flat map) is then scored against that truth:

- `share_a`: of the map's positive mass on the two parts, the share on part a (the first causal kind in
  sorted order), to set against `shapley_a`, part a's share of the positive Shapley mass;
- `weaker`: the share of the map's whole positive mass on the part that gets less of it (two-part targets);
- `hit_top`: pointing game against the part with the largest Shapley value (peaks tied: the share of tied
  peak patches on it, so the uniform map scores the part's area share).

Per layer and method (and over all layers), `summarize` gives the Spearman correlation of share_a with
shapley_a over two-part targets and their mean absolute error, the mean `weaker` of AND and of OR targets,
and the mean `hit_top`, each with a percentile bootstrap CI over targets (`cafe.stats.bootstrap_ci`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cafe.errors import CafeError
from cafe.ground_truth.config import GroundTruthConfig
from cafe.ground_truth.shapley import alone, cause_label, shapley_shares, shapley_values
from cafe.stats import bootstrap_ci, spearman

NAN = float("nan")
KEYS = ["layer", "feature", "slot"]
TRUTH_COLUMNS = KEYS + ["image", "path", "token", "token_on", "parts", "n_parts", "part_a", "part_b"]
TRUTH_COLUMNS += ["z_none", "z_a", "z_b", "z_all", "phi_a", "phi_b", "shapley_a", "alone_a", "alone_b"]
TRUTH_COLUMNS += ["label", "top_part"]
SCORE_COLUMNS = ["method", "share_a", "weaker", "hit_top"]
BASELINES = ("activation", "uniform")


def _pad(values: np.ndarray, n: int = 2) -> list[float]:
    return [float(x) for x in values] + [NAN] * (n - len(values))


def target_truth(rows: pd.DataFrame, config: GroundTruthConfig) -> list:
    """One target's truth row (TRUTH_COLUMNS) from its counterfactual rows (one per subset)."""
    rows = rows.sort_values("present")
    v = rows["z"].to_numpy(dtype=np.float64)
    first = rows.iloc[0]
    kinds = first["parts"].split("+")
    if len(kinds) > 2:
        raise CafeError(f"{first['path']}: {len(kinds)} causal parts; the comparison handles one or two")
    phi = shapley_values(v)
    label = cause_label(v, config.min_effect, config.suffices)
    top = kinds[int(np.argmax(phi))] if label != "none" else ""
    z_a, z_b = (v[1], v[2]) if len(kinds) == 2 else (v[1], NAN)
    return [*first[KEYS + ["image", "path", "token", "token_on", "parts"]], len(kinds), *(kinds + [""])[:2]] + [
        v[0],
        z_a,
        z_b,
        v[-1],
        *_pad(phi),
        shapley_shares(phi)[0] if len(kinds) == 2 else NAN,
        *_pad(alone(v)),
        label,
        top,
    ]


def truth_table(counterfactuals: pd.DataFrame, config: GroundTruthConfig) -> pd.DataFrame:
    """Per target: z on each subset, Shapley values and shares, label and the part with the largest effect."""
    rows = [target_truth(group, config) for _, group in counterfactuals.groupby(KEYS, sort=True)]
    return pd.DataFrame(rows, columns=TRUTH_COLUMNS)


def score_map(values: np.ndarray, parts: list[np.ndarray], top: int | None) -> dict[str, float]:
    """share_a, weaker and hit_top of one (grid, grid) map against its target's part masks (module docstring)."""
    scores = {"share_a": NAN, "weaker": NAN, "hit_top": NAN}
    if not np.isfinite(values).all():
        return scores
    positive = np.clip(values, 0, None)
    total, mass = positive.sum(), [positive[part].sum() for part in parts]
    if len(parts) == 2 and total > 0:
        scores["weaker"] = float(min(mass) / total)
        if sum(mass) > 0:
            scores["share_a"] = float(mass[0] / sum(mass))
    if top is not None:
        scores["hit_top"] = float(parts[top][values == values.max()].mean())
    return scores


def pointing_part(truth: pd.Series) -> int | None:
    """Index of the part with the largest effect, None when the target has no interventional cause."""
    if truth["label"] == "none":
        return None
    return 0 if truth["top_part"] == truth["part_a"] else 1


def _spearman(pairs: np.ndarray) -> np.ndarray:
    """Spearman correlation of the two columns of (..., n, 2) samples, one value per leading index."""
    return spearman(pairs[..., 0], pairs[..., 1])


def _with_ci(name: str, values: np.ndarray, statistic, resamples: int) -> dict[str, float]:
    """`name`, `name_lo`, `name_hi` and `name_n` of a statistic with its bootstrap CI (NaN when too few)."""
    if len(values) < 3:
        return {name: NAN, f"{name}_lo": NAN, f"{name}_hi": NAN, f"{name}_n": len(values)}
    with warnings.catch_warnings():  # a correlation of constant resamples is NaN, and nanpercentile says so
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = bootstrap_ci(values, resamples, statistic)
    return {name: float(statistic(values[None])[0]), f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_n": len(values)}


def _mean(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1)


def _mae(samples: np.ndarray) -> np.ndarray:
    return np.abs(samples[..., 0] - samples[..., 1]).mean(axis=1)


def summarize_group(scores: pd.DataFrame, resamples: int) -> dict[str, float]:
    """The comparison statistics (module docstring) of one layer x method's per-target scores."""
    pairs = scores[(scores["label"] != "none") & scores["share_a"].notna() & scores["shapley_a"].notna()]
    pairs = pairs[["share_a", "shapley_a"]].to_numpy(dtype=np.float64)
    usable = scores[scores["weaker"].notna()]
    weaker = {label: usable.loc[usable["label"] == label, "weaker"] for label in ("AND", "OR")}
    hits = scores.loc[scores["hit_top"].notna(), "hit_top"].to_numpy(dtype=np.float64)
    return {
        **_with_ci("spearman", pairs, _spearman, resamples),
        **_with_ci("mae", pairs, _mae, resamples),
        **_with_ci("and_weaker", weaker["AND"].to_numpy(dtype=np.float64), _mean, resamples),
        **_with_ci("or_weaker", weaker["OR"].to_numpy(dtype=np.float64), _mean, resamples),
        **_with_ci("hit_top", hits, _mean, resamples),
    }


def summarize(scores: pd.DataFrame, resamples: int) -> pd.DataFrame:
    """One row per (layer, method) and per ('all', method) pooled over layers, with the statistics."""
    rows = []
    pooled = scores.assign(layer="all")
    for frame in (scores.assign(layer=scores["layer"].astype(str)), pooled):
        for (layer, method), group in frame.groupby(["layer", "method"], sort=False):
            rows.append({"layer": layer, "method": method, **summarize_group(group, resamples)})
    return pd.DataFrame(rows)


def label_counts(truth: pd.DataFrame) -> dict:
    """Targets per layer, number of parts and label (plus all layers), for the metrics and the README."""
    out = {}
    for layer, rows in [*truth.groupby("layer"), ("all", truth)]:
        key = f"layer{layer}" if layer != "all" else "all"
        out[key] = {
            f"{n}_part{'s' if n > 1 else ''}": rows.loc[rows["n_parts"] == n, "label"].value_counts().to_dict()
            for n in sorted(rows["n_parts"].unique())
        }
    return out
