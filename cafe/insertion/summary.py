"""From long curve tables to Fig 3's numbers: AUC per curve, averaged per feature, a tidy AUC table with
bootstrap CIs, and the metrics (means, greedy-normalised scores, overshoot, paired tests, canvas agreement)."""

from __future__ import annotations

import math
import os
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cafe.errors import CafeError
from cafe.insertion.config import COLUMNS
from cafe.stats import bootstrap_ci, paired_tests, rank_agreement, trapezoid_auc

CURVE = ["layer", "method", "canvas", "kind", "feature", "rank", "image", "token", "seed"]
TARGET = CURVE[:-1]
GROUP = ["layer", "method", "canvas", "kind"]
HIGHER_IS_BETTER = {"insertion": True, "deletion": False}


def read_curve_aucs(paths: list[str | os.PathLike]) -> pd.DataFrame:
    """AUC and overshoot of every curve in the given CSVs (read one file at a time to stay small)."""
    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise CafeError(f"{path}: curves file not found (has `cafe insertion` run for it?)")
        frame = pd.read_csv(path)
        missing = sorted(set(COLUMNS) - set(frame.columns))
        if missing:
            raise CafeError(f"{path}: not an insertion curves table, missing columns {missing}")
        if not frame.empty:
            frames.append(curve_aucs(frame, str(path)))
    return pd.concat(frames, ignore_index=True) if frames else curve_aucs(pd.DataFrame(columns=COLUMNS))


def curve_aucs(frame: pd.DataFrame, where: str = "curves") -> pd.DataFrame:
    """One row per curve: AUC of recovery over the inserted fraction (NaN if not recoverable) and overshoot > 1."""
    if frame.empty:
        return pd.DataFrame(columns=[*CURVE, "auc", "overshoot"])
    frame = frame.sort_values([*CURVE, "step"], kind="stable")
    n_steps = int(frame["step"].max()) + 1
    steps = frame["step"].to_numpy()
    if len(steps) % n_steps or (steps.reshape(-1, n_steps) != np.arange(n_steps)).any():
        raise CafeError(f"{where}: curves have unequal or missing steps; was it written by one `cafe insertion` run?")
    recovery = frame["recovery"].to_numpy(np.float64).reshape(-1, n_steps)
    out = frame.iloc[::n_steps][CURVE].reset_index(drop=True)
    out["auc"] = trapezoid_auc(frame["fraction"].to_numpy(np.float64).reshape(-1, n_steps), recovery)
    out["overshoot"] = np.where(np.isnan(recovery).any(axis=1), np.nan, np.max(recovery, axis=1) > 1 + 1e-6)
    return out


def per_target(aucs: pd.DataFrame) -> pd.DataFrame:
    """Mean AUC over seeds, one row per target and method."""
    return aucs.groupby(TARGET, as_index=False)["auc"].mean()


def per_feature(aucs: pd.DataFrame) -> pd.DataFrame:
    """Mean AUC over a feature's images (after seeds): the unit of every comparison between methods."""
    targets = per_target(aucs).dropna(subset=["auc"])
    return targets.groupby([*GROUP, "feature"], as_index=False)["auc"].mean()


def auc_table(aucs: pd.DataFrame, resamples: int) -> pd.DataFrame:
    """Tidy table (the DVC plot source): mean AUC over features with a bootstrap CI, per layer x method x canvas x
    kind, on all clearly active targets (the greedy ceiling, on a subset only, is left to `greedy_table`)."""
    features = per_feature(aucs[aucs["method"] != "greedy"])
    rows = []
    for key, g in features.groupby(GROUP):
        lo, hi = bootstrap_ci(g["auc"].to_numpy(), resamples)
        rows.append(
            {
                **dict(zip(GROUP, key)),
                "n_features": len(g),
                "auc_mean": g["auc"].mean(),
                "auc_ci_low": lo,
                "auc_ci_high": hi,
            }
        )
    return pd.DataFrame(rows, columns=[*GROUP, "n_features", "auc_mean", "auc_ci_low", "auc_ci_high"])


def greedy_table(aucs: pd.DataFrame, resamples: int) -> pd.DataFrame:
    """On the targets with a greedy ceiling: each method's mean AUC there and (AUC - random) / (greedy - random),
    a ratio of means over the subset with a bootstrap CI over its targets."""
    targets = per_target(aucs).dropna(subset=["auc"])
    wide = targets.pivot_table(index=[c for c in TARGET if c != "method"], columns="method", values="auc")
    rows = []
    if {"greedy", "random"} <= set(wide.columns):
        for (layer, canvas, kind), g in wide.dropna(subset=["greedy", "random"]).groupby(["layer", "canvas", "kind"]):
            for method in g.columns.drop(["greedy", "random"]):
                both = g[[method, "random", "greedy"]].dropna().to_numpy()
                lo, hi = bootstrap_ci(both, resamples, _vs_greedy)
                rows.append(
                    {
                        "layer": layer,
                        "method": method,
                        "canvas": canvas,
                        "kind": kind,
                        "n_targets": len(both),
                        "auc_mean": both[:, 0].mean(),
                        "random_mean": both[:, 1].mean(),
                        "greedy_mean": both[:, 2].mean(),
                        "vs_greedy": _vs_greedy(both[None])[0],
                        "vs_greedy_ci_low": lo,
                        "vs_greedy_ci_high": hi,
                    }
                )
    return pd.DataFrame(
        rows,
        columns=[
            *GROUP,
            "n_targets",
            "auc_mean",
            "random_mean",
            "greedy_mean",
            "vs_greedy",
            "vs_greedy_ci_low",
            "vs_greedy_ci_high",
        ],
    )


def _vs_greedy(samples: np.ndarray) -> np.ndarray:
    """(mean method - mean random) / (mean greedy - mean random) of (B, n, 3) samples (method, random, greedy)."""
    m, r, g = samples.mean(axis=1).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(g - r) > 1e-12, (m - r) / (g - r), np.nan)


def insertion_metrics(aucs: pd.DataFrame, table: pd.DataFrame, greedy: pd.DataFrame) -> dict[str, Any]:
    """Per-method means over layers (DVC metrics), greedy-normalised scores, overshoot and unrecoverable rates,
    paired tests and canvas agreement."""
    features = per_feature(aucs[aucs["method"] != "greedy"])
    agreement = _agreement(table)
    metrics = {
        "auc": _layer_means(table, "auc_mean"),
        "vs_greedy": _layer_means(greedy, "vs_greedy"),
        "greedy_subset": greedy.to_dict("records"),
        "overshoot": _nested(
            aucs.dropna(subset=["overshoot"]).groupby(["canvas", "kind", "method"])["overshoot"].mean()
        ),
        "unrecoverable": _nested(aucs.groupby("canvas")["auc"].apply(lambda a: a.isna().mean())),
        "tests": _tests(features),
        "canvas_agreement": agreement,
        "canvas_disagreements": [
            f"{a['scope']} {a['kind']}: {' vs '.join(a['canvases'])} flip "
            + ", ".join("/".join(p) for p in a["flipped"])
            for a in agreement
            if a["flipped"]
        ],
    }  # what each entry means: docs/methods.md, "Insertion and deletion" (strings here would clutter dvc metrics)
    return _json_safe(metrics)


def _layer_means(table: pd.DataFrame, column: str) -> dict:
    """{canvas: {kind: {method: mean over layers}}} of one column of a per-layer table."""
    return _nested(table.groupby(["canvas", "kind", "method"])[column].mean())


def _nested(series: pd.Series) -> dict:
    """A (multi-)indexed series as nested dicts."""
    out: dict = {}
    for key, value in series.items():
        *path, last = key if isinstance(key, tuple) else (key,)
        node = out
        for part in path:
            node = node.setdefault(str(part), {})
        node[str(last)] = float(value)
    return out


def _scopes(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """All layers together, then each layer."""
    return [("all", frame)] + [(f"layer{layer}", g) for layer, g in frame.groupby("layer")]


def _tests(features: pd.DataFrame) -> list[dict]:
    """Pairwise method tests per scope x canvas x kind, paired by (layer, feature)."""
    out = []
    for scope, frame in _scopes(features):
        for (canvas, kind), g in frame.groupby(["canvas", "kind"]):
            wide = g.pivot_table(index=["layer", "feature"], columns="method", values="auc")
            tests = paired_tests(wide, HIGHER_IS_BETTER[kind])
            out += [{"scope": scope, "canvas": canvas, "kind": kind, **row} for row in tests.to_dict("records")]
    return out


def _agreement(auc_rows: pd.DataFrame) -> list[dict]:
    """Per scope x kind: each canvas's method ranking (best first) and whether two canvases order methods alike."""
    out = []
    for scope, frame in _scopes(auc_rows):
        for kind, g in frame.groupby("kind"):
            means = {c: m.groupby("method")["auc_mean"].mean().to_dict() for c, m in g.groupby("canvas")}
            best_first = {c: sorted(m, key=m.get, reverse=HIGHER_IS_BETTER[kind]) for c, m in means.items()}
            for first, second in combinations(sorted(means), 2):
                out.append(
                    {
                        "scope": scope,
                        "kind": kind,
                        "canvases": [first, second],
                        "rankings": {first: best_first[first], second: best_first[second]},
                        **rank_agreement(means[first], means[second]),
                    }
                )
    return out


def _json_safe(value: Any) -> Any:
    """NaN -> None and numpy scalars -> Python, so the metrics file is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.generic, float)):
        value = value.item() if isinstance(value, np.generic) else value
        return None if isinstance(value, float) and math.isnan(value) else value
    return value
