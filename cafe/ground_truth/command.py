"""Ground truth: score ERF maps (and the activation baseline) against the causes planted in the demo world.

`cafe ground-truth` reads, per layer, the targets (`results/features/layer{L}.h5`) and their ERF maps
(`<erf-dir>/layer{L}/{method}.h5`), finds the targets whose cause is known (`cafe.ground_truth.causes`) and
scores every map of them (`cafe.ground_truth.scoring`): the methods' ERFs, `activation` (the feature's own
activation over the patch tokens) and `chance` (a uniform map). It writes one CSV per layer (one row per
target and method: layer, feature, slot, image, path, class, token, cause, parts, cause_patches, chance,
method, mass_in, hit, weakest_part), the layer x method table, its figure and a metrics JSON.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.ground_truth.causes import World, cause_kinds, cause_regions, load_world
from cafe.ground_truth.config import GroundTruthConfig
from cafe.ground_truth.report import figure, metrics, summarize
from cafe.ground_truth.scoring import chance, score_map
from cafe.io import save_figure, write_csv, write_json
from cafe.io.erf_maps import read_erf_maps
from cafe.io.features import read_features
from cafe.io.manifest import read_manifest

log = logging.getLogger(__name__)
TARGET_COLUMNS = [
    "layer",
    "feature",
    "slot",
    "image",
    "path",
    "class",
    "token",
    "cause",
    "parts",
    "cause_patches",
    "chance",
]
SCORE_COLUMNS = ["method", "mass_in", "hit", "weakest_part"]


def _lookup(manifest: pd.DataFrame, world: World, index: int, where: str) -> tuple[str, str]:
    """(path, class) of manifest row `index`, checked against the demo masks."""
    if index not in manifest.index:
        raise CafeError(f"{where}: image index {index} is not in the manifest")
    path, label = manifest.at[index, "path"], manifest.at[index, "class"]
    if path not in world.row:
        raise CafeError(
            f"{where}: manifest image {index} ({path!r}) is not in the demo masks; ground truth needs "
            f"the manifest built from the demo's images folder (data.images: results/demo/images)"
        )
    return path, label


def score_layer(
    layer: int,
    features: Path,
    erf_files: dict[str, Path],
    manifest: pd.DataFrame,
    world: World,
    config: GroundTruthConfig,
) -> pd.DataFrame:
    """One row per (target with a known cause, method), for the methods' ERFs and the activation map."""
    ff = read_features(features, layer)
    feature, image, token, grid = ff.feature, ff.image, ff.token, ff.grid
    maps = {method: read_erf_maps(path, method, ff) for method, path in erf_files.items()}
    maps["activation"] = ff.layout.token_grid(ff.act_map)
    rows = []
    for n in tqdm(range(len(feature)), desc=f"ground truth layer {layer}", leave=False):
        slots = [j for j in range(image.shape[1]) if image[n, j] >= 0]
        found = {j: _lookup(manifest, world, int(image[n, j]), f"{features}: feature {feature[n]}") for j in slots}
        kinds = cause_kinds(world, [found[j][0] for j in slots], config.kind_purity)
        for j in slots if kinds else ():
            parts = cause_regions(world, found[j][0], kinds, grid, config.patch_overlap)
            if not parts:
                continue
            target = [
                layer,
                int(feature[n]),
                j,
                int(image[n, j]),
                *found[j],
                int(token[n, j]),
                "+".join(kinds),
                len(parts),
                int(np.logical_or.reduce(parts).sum()),
                chance(parts),
            ]
            for method, m in maps.items():
                scores = score_map(m[n, j], parts)
                rows.append(target + [method] + [scores[c] for c in SCORE_COLUMNS[1:]])
    log.info("layer %d: %d of %d features have a known cause", layer, len({r[1] for r in rows}), len(feature))
    return pd.DataFrame(rows, columns=TARGET_COLUMNS + SCORE_COLUMNS)


def run_ground_truth(args: argparse.Namespace) -> None:
    """Score every layer, then write the per-layer CSVs, the summary table, figure and metrics."""
    config = parse_section(GroundTruthConfig, args.params, "ground_truth")
    if not len(args.layers) == len(args.features) == len(args.out_targets):
        raise CafeError(
            f"ground-truth: --layers ({len(args.layers)}), --features ({len(args.features)}) and "
            f"--out-targets ({len(args.out_targets)}) must list one entry per layer"
        )
    world = load_world(args.objects, args.masks)
    manifest = read_manifest(args.manifest).set_index("index")
    frames = []
    for layer, features, out in zip(args.layers, args.features, args.out_targets):
        erf_files = {m: args.erf_dir / f"layer{layer}" / f"{m}.h5" for m in args.methods}
        frames.append(score_layer(layer, features, erf_files, manifest, world, config))
        write_csv(out, frames[-1])
    summary = summarize(pd.concat(frames, ignore_index=True))
    write_csv(args.out_table, summary)
    save_figure(args.out_figure, figure(summary))
    write_json(args.metrics, metrics(summary))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe ground-truth`."""
    p = subparsers.add_parser("ground-truth", help="score ERF maps against the demo world's planted causes")
    p.add_argument("--params", default="{}", help="params.yaml `ground_truth:` section as JSON")
    p.add_argument("--layers", type=int, nargs="+", required=True)
    p.add_argument("--features", type=Path, nargs="+", required=True, help="features HDF5, one per layer")
    p.add_argument("--erf-dir", type=Path, required=True, help="ERF root: <erf-dir>/layer{L}/{method}.h5")
    p.add_argument("--methods", nargs="+", required=True, help="ERF methods to score")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--objects", type=Path, required=True, help="demo objects.csv")
    p.add_argument("--masks", type=Path, required=True, help="demo masks.h5")
    p.add_argument("--out-targets", type=Path, nargs="+", required=True, help="per-target scores CSV, one per layer")
    p.add_argument("--out-table", type=Path, required=True, help="layer x method summary CSV")
    p.add_argument("--out-figure", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.set_defaults(func=run_ground_truth)
