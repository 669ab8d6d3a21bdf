"""Known causes in the demo world: which object kinds drive a feature, and where they are in an image.

Only planted causes count: the objects.csv rows marked `causal` (the parts that make a scene's class);
distractors and backgrounds never do. A feature's cause is known when its top-activating images agree: the
planted kinds present in at least `kind_purity` of them (and in at least MIN_TOP_IMAGES images) are taken as
its cause. A feature that fires on spilled-pills-with-a-frowning-face scenes thus gets both parts as its
cause; one that fires on pills in any scene (pills alone or with the face) gets the pills; one that fires on
rings or a background texture gets none and is left out. For a target (feature, image, token) the causal
region is every planted object of those kinds in that image; a target whose image holds none is left out.
Objects map to patches: a patch belongs to an object if at least `patch_overlap` of its pixels do, and every
object keeps at least the patch it covers most.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cafe.errors import CafeError
from cafe.io import open_h5

MIN_TOP_IMAGES = 3
OBJECT_COLUMNS = ("path", "object", "kind", "causal")
# the counterfactuals table (cafe/ground_truth/interventions.py writes it, compositional_report reads it)
COUNTERFACTUAL_COLUMNS = [
    "layer", "feature", "slot", "image", "path", "token", "token_on", "parts", "present", "kept", "value", "z"
]  # fmt: skip
MAX_PARTS = 4  # 2**4 scenes per target; the demo world has at most 2 causal parts per scene


@dataclass(frozen=True)
class World:
    """The demo's record: planted (causal) objects per image path as (id, kind), the pixel label maps, and the
    world's seed and image size (enough to re-render any scene: `cafe.demo.render_scene`)."""

    objects: dict[str, list[tuple[int, str]]]
    labels: np.ndarray
    row: dict[str, int]
    seed: int
    image_size: int

    def kinds(self, path: str) -> set[str]:
        """Planted object kinds present in image `path`."""
        return {kind for _, kind in self.objects.get(path, [])}


def load_world(objects_csv: str | Path, masks_h5: str | Path) -> World:
    """Read objects.csv and masks.h5 (layout: `cafe.demo`), checking they describe the same images."""
    if not Path(objects_csv).is_file():
        raise CafeError(f"{objects_csv}: objects table not found (run `cafe demo-data` first)")
    table = pd.read_csv(objects_csv)
    missing = [c for c in OBJECT_COLUMNS if c not in table.columns]
    if missing:
        raise CafeError(f"{objects_csv}: missing column(s) {missing}; expected at least {list(OBJECT_COLUMNS)}")
    with open_h5(masks_h5, required=("path", "labels")) as h5:
        paths = list(h5["path"].asstr()[:])
        labels = h5["labels"][:]
        seed, image_size = int(h5.attrs.get("seed", 0)), int(h5.attrs.get("image_size", labels.shape[-1]))
    row = {path: i for i, path in enumerate(paths)}
    unknown = sorted(set(table["path"]) - set(row))
    if unknown:
        raise CafeError(
            f"{objects_csv}: {len(unknown)} path(s) not in {masks_h5}, e.g. {unknown[0]!r}; "
            f"the two files come from different `cafe demo-data` runs"
        )
    causal = table["causal"].map(lambda v: str(v).strip().lower() in ("true", "1"))
    objects: dict[str, list[tuple[int, str]]] = {}
    for path, obj, kind in zip(table["path"][causal], table["object"][causal], table["kind"][causal]):
        objects.setdefault(path, []).append((int(obj), str(kind)))
    return World(objects, labels, row, seed, image_size)


def cause_kinds(world: World, top_paths: list[str], purity: float) -> tuple[str, ...]:
    """Object kinds found in at least `purity` of a feature's top images (none if too few images)."""
    if len(top_paths) < MIN_TOP_IMAGES:
        return ()
    counts = Counter(kind for path in top_paths for kind in world.kinds(path))
    return tuple(sorted(kind for kind, n in counts.items() if n >= purity * len(top_paths)))


def object_patches(labels: np.ndarray, grid: int, overlap: float) -> dict[int, np.ndarray]:
    """Per object id, its (grid, grid) patch mask: patches at least `overlap` covered, plus its best patch."""
    size = labels.shape[0]
    if labels.shape[0] != labels.shape[1] or size % grid:
        raise CafeError(
            f"masks.h5: label maps of {labels.shape[1]}x{labels.shape[0]} px "
            f"do not tile into a {grid}x{grid} patch grid"
        )
    p = size // grid
    tiles = labels.reshape(grid, p, grid, p).transpose(0, 2, 1, 3).reshape(grid, grid, p * p)
    masks = {}
    for obj in np.unique(labels[labels > 0]):
        share = (tiles == obj).mean(-1)
        mask = share >= overlap
        mask.flat[share.argmax()] = True
        masks[int(obj)] = mask
    return masks


def cause_regions(world: World, path: str, kinds: tuple[str, ...], grid: int, overlap: float) -> list[np.ndarray]:
    """Patch masks of the causal parts in image `path`, one per cause kind present (empty: none present)."""
    patches = object_patches(world.labels[world.row[path]], grid, overlap)
    parts = []
    for kind in kinds:
        ids = [obj for obj, k in world.objects.get(path, []) if k == kind]
        if ids:
            parts.append(np.logical_or.reduce([patches[obj] for obj in ids]))
    return parts


def causal_parts(world: World, path: str) -> list[tuple[str, list[int]]]:
    """(kind, object ids) of each causal part of an image, kinds sorted (the bit order of `present`)."""
    parts: dict[str, list[int]] = {}
    for obj, kind in world.objects.get(path, []):
        parts.setdefault(kind, []).append(obj)
    if len(parts) > MAX_PARTS:
        raise CafeError(f"{path}: {len(parts)} causal parts; counterfactuals handle at most {MAX_PARTS}")
    return sorted(parts.items())
