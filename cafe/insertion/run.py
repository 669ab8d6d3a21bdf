"""One layer x one method: orders for every clearly active target, batched curves on every canvas, long rows."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cafe.backbone.tower import Backbone
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget
from cafe.insertion.canvases import make_canvas
from cafe.insertion.config import COLUMNS, InsertionConfig
from cafe.insertion.curves import curves
from cafe.insertion.greedy import greedy_order
from cafe.insertion.orders import seeded_orders, step_counts, target_rng
from cafe.insertion.selection import Targets, activation_scores, erf_scores, sample_targets, select_targets
from cafe.io.features import FeatureFile

log = logging.getLogger(__name__)

BUILTIN_METHODS = ("random", "activation", "greedy")  # methods that need no ERF file
TARGETS_PER_CHUNK = 16
ImageLoader = Callable[[np.ndarray], torch.Tensor]  # manifest indices -> (B, 3, H, W) in [0, 1]


def layer_curves(
    method: str,
    config: InsertionConfig,
    backbone: Backbone,
    sae: torch.nn.Module,
    ff: FeatureFile,
    load: ImageLoader,
    erf_maps: np.ndarray | None = None,
) -> pd.DataFrame:
    """Long-format insertion and deletion curves of `method` on one layer (one row per curve step); ERF methods
    rank patches by `erf_maps` (N, K, grid, grid), the built-in ones need none."""
    targets = select_targets(ff, config.min_activation)
    targets = sample_targets(targets, config.greedy_targets if method == "greedy" else config.max_targets, ff.layer)
    scores = _scores(method, ff, targets, erf_maps)
    targets, scores = _drop_missing(method, targets, scores)
    log.info(
        "layer %d, %s: %d clearly active targets, canvases %s", ff.layer, method, len(targets), list(config.canvases)
    )
    target = FeatureTarget(backbone, sae, ff.layer)
    counts = step_counts(backbone.grid**2, config.steps)
    frames = []
    for start in tqdm(range(0, len(targets), TARGETS_PER_CHUNK), desc=f"insertion L{ff.layer} {method}", unit="chunk"):
        chunk = slice(start, start + TARGETS_PER_CHUNK)
        frames += _chunk_frames(method, config, target, targets.take(chunk), scores[chunk], counts, load)
    return pd.concat(frames, ignore_index=True) if frames else empty_frame()


def _scores(method: str, ff: FeatureFile, targets: Targets, erf_maps: np.ndarray | None) -> np.ndarray:
    """(C, P) scores whose ranking is the method's order (all equal for random and greedy)."""
    if method in ("random", "greedy"):
        return np.zeros((len(targets), ff.grid**2), dtype=np.float32)
    if method == "activation":
        return activation_scores(ff, targets)
    if erf_maps is None:
        raise CafeError(f"insertion: method {method!r} ranks patches by ERF maps, and none were given")
    return erf_scores(erf_maps, targets)


def _drop_missing(method: str, targets: Targets, scores: np.ndarray) -> tuple[Targets, np.ndarray]:
    """Skip targets whose map has NaN (the ERF step wrote no map for them), saying how many."""
    ok = ~np.isnan(scores).any(axis=1)
    if not ok.all():
        log.warning("%s: %d of %d targets have no map (NaN) and are skipped", method, int((~ok).sum()), len(ok))
    return targets.take(ok), scores[ok]


def _chunk_frames(
    method: str,
    config: InsertionConfig,
    target: FeatureTarget,
    targets: Targets,
    scores: np.ndarray,
    counts: np.ndarray,
    load: ImageLoader,
) -> list[pd.DataFrame]:
    """Curves of a chunk of targets on every canvas; the chunk's images are loaded once."""
    unique, image_of = np.unique(targets.image, return_inverse=True)
    images = load(unique).to(target.backbone.device)
    measure = _greedy_curves if method == "greedy" else _ranked_curves
    frames = []
    for canvas_kind in config.canvases:
        canvases = make_canvas(canvas_kind, images, target.backbone, config.blur_sigma)
        for kind, of_target, seed, z, ends in measure(
            config, target, targets, scores, counts, images, canvases, image_of
        ):
            t = targets.take(of_target)
            columns = {
                "layer": target.layer,
                "method": method,
                "canvas": canvas_kind,
                "feature": t.feature,
                "rank": t.rank,
                "image": t.image,
                "token": t.token,
                "seed": seed,
            }
            frames.append(curve_frame(kind, columns, z, ends, counts / counts[-1], config.min_activation * t.max_value))
    return frames


def _ranked_curves(
    config: InsertionConfig,
    target: FeatureTarget,
    targets: Targets,
    scores: np.ndarray,
    counts: np.ndarray,
    images: torch.Tensor,
    canvases: torch.Tensor,
    image_of: np.ndarray,
) -> list:
    """Insertion and deletion curves of the score ranking, one per seed; images that seeds share (all of them where
    the orders are equal) are measured once (`measure`)."""
    orders = np.concatenate(
        [seeded_orders(s, config.seeds, target.layer, f, r) for s, f, r in zip(scores, targets.feature, targets.rank)]
    )
    of_target = np.repeat(np.arange(len(targets)), config.seeds)
    seed = np.tile(np.arange(config.seeds), len(targets))
    ins, dels = curves(
        target,
        images,
        canvases,
        orders,
        counts,
        image_of[of_target],
        targets.token[of_target],
        targets.feature[of_target],
        config.batch_size,
    )
    ends = ins[:, [0, -1]]
    return [("insertion", of_target, seed, ins, ends), ("deletion", of_target, seed, dels, ends)]


def _greedy_curves(
    config: InsertionConfig,
    target: FeatureTarget,
    targets: Targets,
    scores: np.ndarray,
    counts: np.ndarray,
    images: torch.Tensor,
    canvases: torch.Tensor,
    image_of: np.ndarray,
) -> list:
    """The greedy ceiling: one greedy order per target and kind, measured like any other order (seed 0)."""
    out = []
    for i in range(len(targets)):
        one = slice(i, i + 1)
        img, cnv = images[image_of[one]], canvases[image_of[one]]
        for kind in ("insertion", "deletion"):
            rng = target_rng(0, target.layer, int(targets.feature[i]), int(targets.rank[i]))
            order = greedy_order(
                target, img, cnv, int(targets.token[i]), int(targets.feature[i]), counts, kind, rng, config.batch_size
            )
            ins, dels = curves(
                target,
                img,
                cnv,
                order[None],
                counts,
                np.zeros(1, int),
                targets.token[one],
                targets.feature[one],
                config.batch_size,
            )
            out.append((kind, np.array([i]), np.zeros(1, int), ins if kind == "insertion" else dels, ins[:, [0, -1]]))
    return out


def curve_frame(
    kind: str, columns: dict, z: np.ndarray, ends: np.ndarray, fractions: np.ndarray, min_gap: np.ndarray
) -> pd.DataFrame:
    """Long rows of curves z (C, S+1) with recovery (z - z_canvas) / (z_orig - z_canvas), ends = (z_canvas, z_orig).

    Recovery is NaN where the canvas leaves less than min_gap (min_activation x the feature's max) to recover.
    """
    n, m = z.shape
    gap = (ends[:, 1] - ends[:, 0]).astype(np.float64)
    recovery = (z - ends[:, :1]) / np.where(gap > 0, gap, np.nan)[:, None]
    recovery[gap < np.maximum(min_gap, 1e-12)] = np.nan
    repeated = {k: np.repeat(v, m) if isinstance(v, np.ndarray) else v for k, v in columns.items()}
    frame = pd.DataFrame(
        {
            **repeated,
            "kind": kind,
            "step": np.tile(np.arange(m), n),
            "fraction": np.tile(fractions, n),
            "z": z.ravel().astype(np.float32),
            "recovery": recovery.ravel().astype(np.float32),
        }
    )
    return frame[COLUMNS]


def empty_frame() -> pd.DataFrame:
    """A curves table with no rows (a layer without clearly active targets)."""
    return pd.DataFrame({c: [] for c in COLUMNS})
