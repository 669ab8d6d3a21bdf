"""Sprites and backgrounds of the demo world, drawn with numpy from a seeded generator.

A sprite is a small RGB patch with a boolean mask (the object's pixels). Sizes are given for 64 px scenes and
scaled by `unit` = image_size / 64, so the world looks the same at any resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from matplotlib.path import Path as PolygonPath

Rng = np.random.Generator
DARK = np.array([0.08, 0.06, 0.06], dtype=np.float32)


@dataclass(frozen=True)
class Sprite:
    """An object's colours (h, w, 3) in [0, 1] and the mask of its pixels (h, w)."""

    rgb: np.ndarray
    mask: np.ndarray


def _grid(h: int, w: int) -> np.ndarray:
    """Pixel-centre coordinates (2, h, w) of an h x w canvas: y first, then x."""
    return np.mgrid[0:h, 0:w].astype(np.float32) + 0.5


def _side(rng: Rng, low: float, high: float, unit: float) -> int:
    """A random length in [low, high] (64 px units), at least 3 pixels."""
    return max(3, round(rng.uniform(low, high) * unit))


def _vivid(rng: Rng) -> np.ndarray:
    """A saturated colour: one channel high, one low, one anywhere."""
    rgb = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.2), rng.uniform(0.0, 1.0)], dtype=np.float32)
    return rgb[rng.permutation(3)]


def _segment_distance(yy: np.ndarray, xx: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every pixel to segment a-b, and the position along it (0 at a, 1 at b)."""
    ab = b - a
    t = ((yy - a[0]) * ab[0] + (xx - a[1]) * ab[1]) / max(float(ab @ ab), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(yy - (a[0] + t * ab[0]), xx - (a[1] + t * ab[1])), t


def _canvas(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((h, w, 3), dtype=np.float32), np.zeros((h, w), dtype=bool)


def face(rng: Rng, unit: float, smiling: bool) -> Sprite:
    """A round face with two eyes and a mouth bent up (smiling) or down (frowning)."""
    d = _side(rng, 16, 22, unit)
    yy, xx = _grid(d, d)
    c = d / 2
    skin = np.clip(np.array([1.0, 0.82, 0.25]) + rng.uniform(-0.1, 0.1, 3), 0, 1).astype(np.float32)
    rgb, mask = _canvas(d, d)
    mask[:] = (yy - c) ** 2 + (xx - c) ** 2 <= c**2
    rgb[:] = skin
    eye_r = max(1.0, 0.09 * d)
    for ex in (0.32 * d, 0.68 * d):
        rgb[(yy - 0.36 * d) ** 2 + (xx - ex) ** 2 <= eye_r**2] = DARK
    u = (xx - c) / (0.28 * d)
    depth, base = 0.16 * d, 0.7 * d
    bend = depth * (1 - u**2)
    curve = base - depth / 2 + bend if smiling else base + depth / 2 - bend
    rgb[(np.abs(u) <= 1) & (np.abs(yy - curve) <= max(0.8, 0.05 * d))] = DARK
    return Sprite(rgb, mask)


def pills(rng: Rng, unit: float) -> Sprite:
    """Spilled pills: three to five two-tone capsules scattered in a small area."""
    side = _side(rng, 16, 20, unit)
    yy, xx = _grid(side, side)
    rgb, mask = _canvas(side, side)
    white = np.array([0.97, 0.97, 0.95], dtype=np.float32)
    for _ in range(int(rng.integers(3, 6))):
        half, radius = rng.uniform(2.6, 3.6) * unit, 1.6 * unit
        angle = rng.uniform(0, np.pi)
        centre = rng.uniform(half + radius, side - half - radius, 2)
        axis = half * np.array([np.sin(angle), np.cos(angle)])
        dist, t = _segment_distance(yy, xx, centre - axis, centre + axis)
        capsule = dist <= radius
        rgb[capsule & (t < 0.5)] = _vivid(rng)
        rgb[capsule & (t >= 0.5)] = white
        mask |= capsule
    return Sprite(rgb, mask)


def balloons(rng: Rng, unit: float) -> Sprite:
    """Two or three oval balloons on strings tied at one knot below them."""
    w, h = _side(rng, 17, 20, unit), _side(rng, 20, 23, unit)
    yy, xx = _grid(h, w)
    rgb, mask = _canvas(h, w)
    knot = np.array([h - 1.0, w / 2])
    rx, ry = 3.4 * unit, 4.4 * unit
    count = int(rng.integers(2, 4))
    for cx in np.linspace(rx + 0.5, w - rx - 0.5, count):
        cy = rng.uniform(ry + 0.5, h * 0.5)
        string, _ = _segment_distance(yy, xx, np.array([cy + ry, cx]), knot)
        rgb[string <= 0.6 * unit] = DARK
        mask |= string <= 0.6 * unit
        oval = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        rgb[oval] = _vivid(rng)
        mask |= oval
    return Sprite(rgb, mask)


def star(rng: Rng, unit: float) -> Sprite:
    """A five-pointed star in one vivid colour."""
    radius = rng.uniform(8, 11) * unit
    d = int(np.ceil(2 * radius))
    yy, xx = _grid(d, d)
    angles = rng.uniform(0, 2 * np.pi) + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, radius, 0.42 * radius)
    outline = np.stack([d / 2 + radii * np.cos(angles), d / 2 + radii * np.sin(angles)], axis=1)
    inside = PolygonPath(outline).contains_points(np.stack([xx.ravel(), yy.ravel()], axis=1)).reshape(d, d)
    rgb, mask = _canvas(d, d)
    rgb[:], mask[:] = _vivid(rng), inside
    return Sprite(rgb, mask)


def checker(rng: Rng, unit: float) -> Sprite:
    """A square of checkerboard texture in two contrasting colours."""
    side, cell = _side(rng, 14, 18, unit), max(2.0, rng.uniform(2.5, 3.5) * unit)
    yy, xx = _grid(side, side)
    a = _vivid(rng)
    b = np.where(a > 0.5, 0.1, 0.95).astype(np.float32)
    odd = ((yy // cell + xx // cell) % 2).astype(bool)
    rgb, mask = _canvas(side, side)
    rgb[:], mask[:] = a, True
    rgb[odd] = b
    return Sprite(rgb, mask)


def box(rng: Rng, unit: float) -> Sprite:
    """Distractor: a plain rectangle of any colour."""
    h, w = _side(rng, 5, 12, unit), _side(rng, 5, 12, unit)
    return Sprite(np.broadcast_to(rng.uniform(0, 1, 3).astype(np.float32), (h, w, 3)).copy(), np.ones((h, w), bool))


def bar(rng: Rng, unit: float) -> Sprite:
    """Distractor: a long thin horizontal or vertical bar of any colour."""
    long, thin = _side(rng, 12, 22, unit), _side(rng, 2, 3, unit)
    h, w = (thin, long) if rng.random() < 0.5 else (long, thin)
    return Sprite(np.broadcast_to(rng.uniform(0, 1, 3).astype(np.float32), (h, w, 3)).copy(), np.ones((h, w), bool))


def ring(rng: Rng, unit: float) -> Sprite:
    """Distractor: an open ring of any colour."""
    d = _side(rng, 10, 16, unit)
    yy, xx = _grid(d, d)
    r = np.hypot(yy - d / 2, xx - d / 2)
    rgb, mask = _canvas(d, d)
    mask[:] = (r <= d / 2) & (r >= d / 2 - max(1.5, 2.2 * unit))
    rgb[:] = rng.uniform(0, 1, 3)
    return Sprite(rgb, mask)


SPRITES: dict[str, Callable[[Rng, float], Sprite]] = {
    "pills": pills,
    "frown_face": partial(face, smiling=False),
    "smile_face": partial(face, smiling=True),
    "balloons": balloons,
    "star": star,
    "checker": checker,
    "box": box,
    "bar": bar,
    "ring": ring,
}


def background(rng: Rng, size: int) -> np.ndarray:
    """A muted, low-contrast backdrop: flat with noise, a gradient, stripes or faint dots."""
    yy, xx = _grid(size, size) / size
    base = (0.5 * rng.uniform(0.15, 0.85, 3) + 0.25).astype(np.float32)
    other = (0.5 * rng.uniform(0.15, 0.85, 3) + 0.25).astype(np.float32)
    style = int(rng.integers(4))
    if style == 0:
        weight = np.zeros_like(yy)
    elif style == 1:
        angle = rng.uniform(0, 2 * np.pi)
        weight = np.clip(0.5 + (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)), 0, 1)
    elif style == 2:
        angle, freq = rng.uniform(0, np.pi), rng.uniform(4, 10)
        weight = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    else:
        weight = (rng.random((size, size)) < 0.06).astype(np.float32)
    image = base + (other - base) * (0.5 * weight)[..., None]
    return np.clip(image + rng.normal(0, 0.025, image.shape), 0, 1).astype(np.float32)
