"""The classes of the demo world, which objects cause each label, and how one scene is composed.

Every scene holds the causal objects of its class plus zero to three distractors (boxes, bars, rings) on a
textured background; nothing else. Compositional classes need two parts at once: `pills_and_frown` (the
paper's "despair": spilled pills and a frowning face) and `balloons_and_smile`. Each of their parts alone is
a class of its own (`pills`, `frown`, ...), so a network can only tell them apart by combining evidence
from two places in the image. The parts of a compositional scene are at least image_size/8 pixels apart
(one demo patch), so no 8 px patch holds both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cafe.demo.shapes import SPRITES, Rng, Sprite, background

CLASSES: dict[str, tuple[str, ...]] = {
    "pills_and_frown": ("pills", "frown_face"),
    "balloons_and_smile": ("balloons", "smile_face"),
    "pills": ("pills",),
    "frown": ("frown_face",),
    "balloons": ("balloons",),
    "smile": ("smile_face",),
    "star": ("star",),
    "checker": ("checker",),
}
COMPOSITIONAL = tuple(name for name, parts in CLASSES.items() if len(parts) > 1)
DISTRACTORS = ("box", "bar", "ring")
MAX_DISTRACTORS = 3


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: its id in the label map, kind, whether it causes the label, and its tight
    bounding box (x0, y0, x1, y1), end-exclusive pixels."""

    id: int
    kind: str
    causal: bool
    bbox: tuple[int, int, int, int]
    area: int


@dataclass(frozen=True)
class Scene:
    """A rendered scene: RGB pixels (H, W, 3) uint8, an object-id label map (H, W) uint8 (0 = background)."""

    image: np.ndarray
    labels: np.ndarray
    objects: tuple[SceneObject, ...]


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    """True if boxes (y0, x0, y1, x1) are separated by at least `gap` pixels along some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _place(rng: Rng, shapes: list[tuple[int, int]], causal: list[bool], size: int) -> list[tuple[int, int] | None]:
    """Top-left corners for sprites, non-overlapping; causal parts one patch apart; a distractor that does
    not fit is dropped (None)."""
    part_gap, gap = max(1, size // 8), max(1, size // 32)
    while True:
        placed: list[tuple[tuple[int, int, int, int], bool]] = []
        corners: list[tuple[int, int] | None] = []
        for (h, w), is_causal in zip(shapes, causal):
            corner = None
            for _ in range(100):
                y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
                cand = (y, x, y + h, x + w)
                if all(_apart(cand, box, part_gap if is_causal and c else gap) for box, c in placed):
                    corner = (y, x)
                    placed.append((cand, is_causal))
                    break
            if corner is None and is_causal:
                break
            corners.append(corner)
        else:
            return corners


def _paste(image: np.ndarray, labels: np.ndarray, sprite: Sprite, corner: tuple[int, int], obj_id: int) -> None:
    y, x = corner
    h, w = sprite.mask.shape
    image[y : y + h, x : x + w][sprite.mask] = sprite.rgb[sprite.mask]
    labels[y : y + h, x : x + w][sprite.mask] = obj_id


def _describe(labels: np.ndarray, obj_id: int, kind: str, causal: bool) -> SceneObject:
    ys, xs = np.nonzero(labels == obj_id)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return SceneObject(obj_id, kind, causal, bbox, int(ys.size))


@dataclass(frozen=True)
class SceneDraw:
    """Every random draw of one scene, before composition: object kinds, whether each is causal, their sprites,
    their top-left corners (None: a distractor that did not fit) and the background (size, size, 3) in [0, 1]."""

    kinds: tuple[str, ...]
    causal: tuple[bool, ...]
    sprites: tuple[Sprite, ...]
    corners: tuple[tuple[int, int] | None, ...]
    background: np.ndarray


def draw_scene(rng: Rng, label: str, size: int) -> SceneDraw:
    """Draw everything random about one scene of class `label` at size x size pixels (no pixels composed yet)."""
    unit = size / 64
    kinds = list(CLASSES[label]) + list(rng.choice(DISTRACTORS, int(rng.integers(0, MAX_DISTRACTORS + 1))))
    causal = [i < len(CLASSES[label]) for i in range(len(kinds))]
    sprites = [SPRITES[kind](rng, unit) for kind in kinds]
    corners = _place(rng, [s.mask.shape for s in sprites], causal, size)
    return SceneDraw(tuple(map(str, kinds)), tuple(causal), tuple(sprites), tuple(corners), background(rng, size))


def compose(draw: SceneDraw, omit: frozenset[int] | set[int] = frozenset()) -> Scene:
    """Paste the drawn objects on the background, leaving out the objects whose ids are in `omit`.

    Ids are those of the full scene (1.. in placement order), with or without omissions, so objects.csv rows
    name the same object in every counterfactual; an omitted object shows the background it covered. Objects
    never overlap, so every other pixel is the full scene's.
    """
    image, labels = draw.background.copy(), np.zeros(draw.background.shape[:2], dtype=np.uint8)
    objects = []
    placed = [(k, c, s, xy) for k, c, s, xy in zip(draw.kinds, draw.causal, draw.sprites, draw.corners) if xy]
    for obj_id, (kind, is_causal, sprite, corner) in enumerate(placed, start=1):
        if obj_id not in omit:
            _paste(image, labels, sprite, corner, obj_id)
            objects.append((obj_id, kind, is_causal))
    pixels = np.round(image * 255).astype(np.uint8)
    return Scene(pixels, labels, tuple(_describe(labels, *obj) for obj in objects))
