"""`cafe compositional`: the interventional truth of every demo target against its ERF maps, as a per-target
CSV, a layer x method table, the figure `compositional.png` and DVC metrics (statistics:
`cafe.ground_truth.compositional`)."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.ground_truth.causes import COUNTERFACTUAL_COLUMNS, World, causal_parts, load_world, object_patches
from cafe.ground_truth.compositional import (
    BASELINES,
    SCORE_COLUMNS,
    TRUTH_COLUMNS,
    label_counts,
    pointing_part,
    score_map,
    summarize,
    truth_table,
)
from cafe.ground_truth.config import GroundTruthConfig
from cafe.io import save_figure, write_csv, write_json
from cafe.io.erf_maps import read_erf_maps
from cafe.io.features import FeatureFile, read_features

log = logging.getLogger(__name__)
LABEL_STYLE = {
    "AND": dict(color="tab:red", marker="o", label="AND"),
    "OR": dict(color="tab:blue", marker="s", label="OR"),
    "single": dict(color="grey", marker=".", label="single"),
    "mixed": dict(color="tab:green", marker="^", label="mixed"),
}


def part_masks(world: World, path: str, grid: int, overlap: float) -> list[np.ndarray]:
    """(grid, grid) patch mask of each causal part of an image, in the order of `causal_parts`."""
    patches = object_patches(world.labels[world.row[path]], grid, overlap)
    return [np.logical_or.reduce([patches[obj] for obj in ids]) for _, ids in causal_parts(world, path)]


def layer_maps(ff: FeatureFile, erf_files: dict[str, Path]) -> dict[str, np.ndarray]:
    """Every method's maps (N, K, grid, grid) of one layer, plus the activation and uniform baselines."""
    maps = {method: read_erf_maps(path, method, ff) for method, path in erf_files.items()}
    maps["activation"] = ff.layout.token_grid(ff.act_map)
    maps["uniform"] = np.ones_like(maps["activation"])
    return maps


def score_layer(
    truth: pd.DataFrame, ff: FeatureFile, maps: dict[str, np.ndarray], world: World, overlap: float
) -> pd.DataFrame:
    """One row per (target, method): the target's truth and its map's share_a, weaker and hit_top."""
    row_of = {int(f): n for n, f in enumerate(ff.feature)}
    rows = []
    for t in tqdm(truth.itertuples(index=False), total=len(truth), desc=f"compare L{ff.layer}", leave=False):
        if t.feature not in row_of:
            raise CafeError(f"{ff.path}: feature {t.feature} of the counterfactuals is not in the features file")
        n, series = row_of[t.feature], pd.Series(t._asdict())
        parts, top = part_masks(world, t.path, ff.grid, overlap), pointing_part(series)
        for method, m in maps.items():
            scores = score_map(m[n, t.slot], parts, top)
            rows.append(list(t) + [method] + [scores[c] for c in SCORE_COLUMNS[1:]])
    return pd.DataFrame(rows, columns=TRUTH_COLUMNS + SCORE_COLUMNS)


def read_counterfactuals(path: Path, layer: int) -> pd.DataFrame:
    """A layer's counterfactual CSV, checked for its columns and layer."""
    if not Path(path).is_file():
        raise CafeError(f"{path}: counterfactuals not found (run `cafe counterfactuals` first)")
    frame = pd.read_csv(path, dtype={"token_on": str, "kept": str, "parts": str}, keep_default_na=False)
    missing = [c for c in COUNTERFACTUAL_COLUMNS if c not in frame.columns]
    if missing:
        raise CafeError(f"{path}: missing column(s) {missing}")
    if len(frame) and set(frame["layer"]) != {layer}:
        raise CafeError(f"{path}: counterfactuals of layer(s) {sorted(set(frame['layer']))}, expected layer {layer}")
    return frame


def figure(scores: pd.DataFrame, summary: pd.DataFrame, methods: list[str]) -> Figure:
    """Top: per method, ERF share of part a vs its Shapley share (AND / OR / single marked); bottom: the map's
    mass on the weaker part, AND vs OR targets, per layer with bootstrap CIs."""
    fig = Figure(figsize=(3.0 * len(methods), 6.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(methods), squeeze=False)
    pooled = summary[summary["layer"] == "all"].set_index("method")
    layers = [x for x in summary["layer"].unique() if x != "all"]
    for col, method in enumerate(methods):
        ax, bars = axes[0, col], axes[1, col]
        rows = scores[(scores["method"] == method) & (scores["label"] != "none")]
        for label, style in LABEL_STYLE.items():
            pick = rows[rows["label"] == label]
            if pick.empty:
                continue
            ax.scatter(pick["shapley_a"], pick["share_a"], s=14, alpha=0.7, edgecolors="none", **style)
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls=":")
        if method in pooled.index:
            s = pooled.loc[method]
            ax.set_title(
                f"{method}\nρ = {s.spearman:.2f} [{s.spearman_lo:.2f}, {s.spearman_hi:.2f}], MAE {s.mae:.2f}",
                fontsize=9,
            )
        ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), xlabel="Shapley share of part a")
        _weaker_bars(bars, summary[summary["method"] == method].set_index("layer"), layers)
    axes[0, 0].set_ylabel("map's share of part a\n(of its mass on the two parts)")
    axes[1, 0].set_ylabel("map's mass on the weaker part")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    axes[1, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Do ERFs see both parts? Interventional truth on the demo world (two-part scenes)")
    fig.tight_layout()
    return fig


def _weaker_bars(ax, rows: pd.DataFrame, layers: list[str]) -> None:
    """AND and OR bars of the weaker-part mass per layer (and pooled), with their bootstrap CIs."""
    x = np.arange(len(layers) + 1)
    for offset, (kind, color) in zip((-0.2, 0.2), (("and", "tab:red"), ("or", "tab:blue"))):
        keys = [k for k in layers + ["all"]]
        mean = np.array([rows[f"{kind}_weaker"].get(k, np.nan) for k in keys], dtype=float)
        lo = np.array([rows[f"{kind}_weaker_lo"].get(k, np.nan) for k in keys], dtype=float)
        hi = np.array([rows[f"{kind}_weaker_hi"].get(k, np.nan) for k in keys], dtype=float)
        err = np.nan_to_num(np.stack([mean - lo, hi - mean]), nan=0.0)
        ax.bar(x + offset, np.nan_to_num(mean), width=0.4, color=color, yerr=err, capsize=2, label=kind.upper())
    ax.set_xticks(x, [f"L{k}" for k in layers] + ["all"])
    ax.set_ylim(0, 0.55)  # the weaker of two parts holds at most half of the mass
    ax.grid(axis="y", alpha=0.3)


def metrics(summary: pd.DataFrame, counts: dict) -> dict:
    """Nested JSON for `dvc metrics`: label counts, then layer -> method -> statistics (NaN as null)."""

    def clean(value) -> float | int | None:
        if isinstance(value, (int, np.integer)):
            return int(value)
        return None if value is None or math.isnan(float(value)) else round(float(value), 4)

    keep = ["spearman", "mae", "and_weaker", "or_weaker", "hit_top", "spearman_n", "and_weaker_n", "or_weaker_n"]
    out: dict = {"labels": counts}
    for layer, rows in summary.groupby("layer", sort=False):
        key = "all" if layer == "all" else f"layer{layer}"
        out[key] = {row["method"]: {k: clean(row[k]) for k in keep} for _, row in rows.iterrows()}
    return out


def run_compositional(args: argparse.Namespace) -> None:
    """CLI: truth per target from the counterfactuals, every map scored against it, table, figure, metrics."""
    config = parse_section(GroundTruthConfig, args.params, "ground_truth")
    if not len(args.layers) == len(args.features) == len(args.counterfactuals):
        raise CafeError("compositional: --layers, --features and --counterfactuals must list one entry per layer")
    world = load_world(args.objects, args.masks)
    truths, frames = [], []
    for layer, features, cf in zip(args.layers, args.features, args.counterfactuals):
        ff = read_features(features, layer)
        truths.append(truth_table(read_counterfactuals(cf, layer), config))
        maps = layer_maps(ff, {m: args.erf_dir / f"layer{layer}" / f"{m}.h5" for m in args.methods})
        frames.append(score_layer(truths[-1], ff, maps, world, config.patch_overlap))
    scores = pd.concat(frames, ignore_index=True)
    truth = pd.concat(truths, ignore_index=True)
    summary = summarize(scores, config.bootstrap)
    counts = label_counts(truth)
    log.info("labels: %s", counts["all"] if len(truth) else {})
    write_csv(args.out_targets, scores)
    write_csv(args.out_table, summary)
    save_figure(args.out_figure, figure(scores, summary, list(args.methods) + list(BASELINES)))
    write_json(args.metrics, metrics(summary, counts))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe compositional`."""
    p = subparsers.add_parser("compositional", help="interventional truth of demo targets vs their ERF maps")
    p.add_argument("--params", default="{}", help="params.yaml `ground_truth:` section (or part of it) as JSON")
    p.add_argument("--layers", type=int, nargs="+", required=True)
    p.add_argument("--features", type=Path, nargs="+", required=True, help="features HDF5, one per layer")
    p.add_argument("--counterfactuals", type=Path, nargs="+", required=True, help="counterfactual CSV, one per layer")
    p.add_argument("--erf-dir", type=Path, required=True, help="ERF root: <erf-dir>/layer{L}/{method}.h5")
    p.add_argument("--methods", nargs="+", required=True, help="ERF methods to score")
    p.add_argument("--objects", type=Path, required=True, help="demo objects.csv")
    p.add_argument("--masks", type=Path, required=True, help="demo masks.h5")
    p.add_argument("--out-targets", type=Path, required=True, help="per target x method CSV")
    p.add_argument("--out-table", type=Path, required=True, help="layer x method summary CSV")
    p.add_argument("--out-figure", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.set_defaults(func=run_compositional)
