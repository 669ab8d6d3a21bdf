"""Counterfactual scenes: z_k(I, t) of every target re-measured with its image's causal objects left out.

For each target (feature, top image, token) whose demo image holds planted causal objects, the scene is
re-rendered from its own random draws (`cafe.demo.render_scene`) once per subset of its causal parts: the
original (all present), without each part, without each pair, ..., with none. Removal re-renders: the removed
object's pixels show the background it covered, every other pixel is the original's, so no canvas enters
the truth. z is read at the target's token t as recorded, wherever the objects went; when a removed object
covered t's patch (`token_on` names it), t's own input changes too and that change is part of the object's
effect. Every variant image is rendered once and the targets' forwards run batched through blocks 1..L.

`cafe counterfactuals` writes one CSV per layer, one row per (target, subset): layer, feature, slot, image,
path, token, token_on (the causal kind with pixels in t's patch, `cls` for the CLS token, empty if none),
parts (the image's causal kinds, sorted, `+`-joined: bit i of `present` is part i), present (bitmask),
kept (the kinds present, `+`-joined), value (z of the original image from the features file) and z.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from cafe.backbone import BackboneConfig, tower_shape
from cafe.backbone.tower import Backbone
from cafe.config import parse_section
from cafe.demo.config import DemoConfig
from cafe.demo.data import render_scene, scene_index
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget
from cafe.ground_truth.causes import COUNTERFACTUAL_COLUMNS, World, causal_parts, load_world
from cafe.ground_truth.config import GroundTruthConfig
from cafe.images import eval_transform
from cafe.io import write_csv
from cafe.io.features import FeatureFile, read_features
from cafe.io.manifest import read_manifest
from cafe.sae.model import check_sae, load_sae
from cafe.tokens import TokenLayout

log = logging.getLogger(__name__)
# how closely the re-rendered original must reproduce the recorded z (found on float16 activations): a share of
# the feature's maximum, plus an absolute floor for nearly silent features
TOLERANCE, FLOOR = 0.02, 1e-3


def token_on(world: World, path: str, token: int, layout: TokenLayout) -> str:
    """The causal kind with pixels in the target token's patch ('cls' for the CLS token, '' if none)."""
    if token < layout.n_prefix:
        return "cls" if token == layout.cls else ""
    labels = world.labels[world.row[path]]
    p = labels.shape[0] // layout.grid
    row, col = divmod(token - layout.n_prefix, layout.grid)
    inside = set(np.unique(labels[row * p : (row + 1) * p, col * p : (col + 1) * p]).tolist())
    return "+".join(kind for kind, ids in causal_parts(world, path) if inside & set(ids))


def plan(ff: FeatureFile, manifest: pd.DataFrame, world: World) -> pd.DataFrame:
    """One row per (target, subset of its image's causal parts); targets whose image holds none are left out."""
    rows = []
    for (n, j), index in np.ndenumerate(ff.image):
        if index < 0:
            continue
        if index not in manifest.index or manifest.at[index, "path"] not in world.row:
            raise CafeError(f"{ff.path}: image {index} is not a demo scene of this manifest and masks.h5")
        path = manifest.at[index, "path"]
        parts = causal_parts(world, path)
        if not parts:
            continue
        token = int(ff.token[n, j])
        kinds = [kind for kind, _ in parts]
        where = token_on(world, path, token, ff.layout)
        for present in range(2 ** len(parts)):
            kept = "+".join(k for i, k in enumerate(kinds) if present >> i & 1)
            target = [ff.layer, int(ff.feature[n]), j, int(index), path, token, where, "+".join(kinds)]
            rows.append(target + [present, kept, float(ff.value[n, j])])
    return pd.DataFrame(rows, columns=COUNTERFACTUAL_COLUMNS[:-1])


def omitted(world: World, path: str, present: int) -> frozenset[int]:
    """Object ids of the causal parts absent from subset `present`."""
    parts = causal_parts(world, path)
    return frozenset(obj for i, (_, ids) in enumerate(parts) if not present >> i & 1 for obj in ids)


def render_variants(world: World, variants: pd.DataFrame, size: int) -> torch.Tensor:
    """Images (V, 3, size, size) in [0, 1] of the (path, present) rows, through the eval transform the real
    images go through; the full scene's re-render must match masks.h5, or the world changed since."""
    config = DemoConfig(n_images=1, image_size=world.image_size, seed=world.seed)
    transform = eval_transform(size)
    images = []
    for path, present in tqdm(zip(variants["path"], variants["present"]), total=len(variants), desc="render"):
        scene = render_scene(config, scene_index(path), omitted(world, path, present))
        full = present == 2 ** len(causal_parts(world, path)) - 1
        if full and not np.array_equal(scene.labels, world.labels[world.row[path]]):
            raise CafeError(f"{path}: the re-rendered scene differs from masks.h5; was the demo made by other code?")
        images.append(transform(Image.fromarray(scene.image)))
    return torch.stack(images)


@torch.no_grad()
def measure(
    target: FeatureTarget, images: torch.Tensor, rows: pd.DataFrame, variant: np.ndarray, batch: int
) -> np.ndarray:
    """z of every row: its feature at its token on image `images[variant[row]]`, `batch` rows per forward."""
    z = np.empty(len(rows), dtype=np.float64)
    tokens, features = torch.tensor(rows["token"].to_numpy()), torch.tensor(rows["feature"].to_numpy())
    for start in tqdm(range(0, len(rows), batch), desc=f"counterfactuals L{target.layer}", unit="batch"):
        chunk = slice(start, start + batch)
        pixels = target.backbone.normalize(images[variant[chunk]])
        z[chunk] = target(pixels, tokens[chunk], features[chunk]).double().cpu().numpy()
    return z


def check_originals(rows: pd.DataFrame, ff: FeatureFile) -> None:
    """The re-rendered original scenes must reproduce the recorded activations (within TOLERANCE of the
    feature's maximum: the features step reads float16 activations)."""
    full = rows[rows["kept"] == rows["parts"]]
    scale = dict(zip(ff.feature.tolist(), ff.max_value.tolist()))
    gap = (full["z"] - full["value"]).abs()
    excess = gap / (TOLERANCE * full["feature"].map(scale).to_numpy() + FLOOR)
    worst = int(excess.to_numpy().argmax()) if len(gap) else None
    if worst is not None and excess.iloc[worst] > 1:
        bad = full.iloc[worst]
        raise CafeError(
            f"layer {bad.layer}, feature {bad.feature}, image {bad.path}: the re-rendered scene gives z = "
            f"{bad.z:.4g} where the features file recorded {bad.value:.4g}; the images, tower or SAE changed since"
        )
    log.info("re-rendered originals reproduce the recorded z: max abs difference %.2g", gap.max())


def counterfactuals(
    ff: FeatureFile, manifest: pd.DataFrame, world: World, target: FeatureTarget, batch: int, size: int
) -> pd.DataFrame:
    """Every target's z on every counterfactual scene of its image (columns: module docstring)."""
    rows = plan(ff, manifest, world)
    keys = rows[["path", "present"]].drop_duplicates(ignore_index=True)
    lookup = {key: i for i, key in enumerate(zip(keys["path"], keys["present"]))}
    variant = np.array([lookup[key] for key in zip(rows["path"], rows["present"])])
    log.info("layer %d: %d targets, %d scenes to render", ff.layer, int((rows["present"] == 0).sum()), len(keys))
    images = render_variants(world, keys, size)  # on the CPU; each batch moves to the device in `normalize`
    rows["z"] = measure(target, images, rows, variant, batch)
    check_originals(rows, ff)
    return rows


def run_counterfactuals(args: argparse.Namespace) -> None:
    """CLI: check the inputs, load tower and SAE, measure every counterfactual of one layer, write the CSV."""
    config = parse_section(GroundTruthConfig, args.params, "ground_truth")
    backbone_cfg = parse_section(BackboneConfig, args.backbone, "backbone")
    shape = tower_shape(backbone_cfg)
    ff = read_features(args.features, args.layer, shape.layout)
    world = load_world(args.objects, args.masks)
    manifest = read_manifest(args.manifest).set_index("index")
    backbone = Backbone.load(backbone_cfg)
    sae, meta = load_sae(args.sae, backbone.device)
    check_sae(meta, ff, args.sae)
    target = FeatureTarget(backbone, sae, args.layer)
    write_csv(args.out, counterfactuals(ff, manifest, world, target, config.batch_size, shape.image_size))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe counterfactuals`."""
    p = subparsers.add_parser("counterfactuals", help="z of every demo target with its causal objects left out")
    p.add_argument("--params", default="{}", help="params.yaml `ground_truth:` section (or part of it) as JSON")
    p.add_argument("--backbone", required=True, help="the params.yaml `backbone` section as JSON")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--features", type=Path, required=True, help="results/features/layer{L}.h5")
    p.add_argument("--sae", required=True, help="results/sae/layer{L}.pt")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--objects", type=Path, required=True, help="demo objects.csv")
    p.add_argument("--masks", type=Path, required=True, help="demo masks.h5")
    p.add_argument("--out", type=Path, required=True, help="counterfactual CSV of this layer")
    p.set_defaults(func=run_counterfactuals)
