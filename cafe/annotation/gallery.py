"""Per-feature gallery PNGs: each top image twice, with the activation map and with the ERF, peaks marked on both.

One Agg figure is built per layer and only its data is swapped per feature: building axes costs more than
drawing them, so a layer of 100 features renders in seconds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from tqdm import tqdm

from cafe.annotation.layer_maps import LayerTargets
from cafe.annotation.score import MapScores, evidence, peak
from cafe.images import Crop, load_images
from cafe.io import atomic_path

log = logging.getLogger(__name__)

DISPLAY_SIZE = 128  # pixels per shown image (the model's crop, rescaled)
PAIRS_PER_ROW = 3
PANEL_INCHES = 1.7
DPI = 90
LOAD_CHUNK = 64
OUTLINE = [patheffects.withStroke(linewidth=4, foreground="black")]


def overlay_cmap() -> ListedColormap:
    """inferno whose low end is transparent, so the image shows where a map is weak."""
    colours = colormaps["inferno"](np.linspace(0, 1, 256))
    colours[:, 3] = np.linspace(0, 1, 256) ** 0.6 * 0.8
    return ListedColormap(colours)


def shown_targets(targets: LayerTargets, k: int) -> list[np.ndarray]:
    """Per feature, the columns of its first `k` valid targets (the ones a gallery shows)."""
    return [np.flatnonzero(row)[:k] for row in targets.valid]


def load_gallery_images(
    targets: LayerTargets, k: int, root: str | Path, paths: dict[int, str], size: int = DISPLAY_SIZE
) -> dict[int, np.ndarray]:
    """The shown images as uint8 (size, size, 3), the region the model saw, keyed by manifest index."""
    wanted = sorted({int(targets.image[n, j]) for n, cols in enumerate(shown_targets(targets, k)) for j in cols})
    return load_indexed_images(wanted, root, paths, targets.crop, size)


def load_indexed_images(
    wanted: list[int], root: str | Path, paths: dict[int, str], crop: Crop, size: int = DISPLAY_SIZE
) -> dict[int, np.ndarray]:
    """Images by manifest index as uint8 (size, size, 3): the model's crop `crop` of each, at `size` pixels."""
    images = {}
    for start in tqdm(range(0, len(wanted), LOAD_CHUNK), desc="gallery images", unit="chunk", leave=False):
        chunk = wanted[start : start + LOAD_CHUNK]
        batch = load_images(root, [paths[i] for i in chunk], crop.scaled(size))
        pixels = (batch.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        images.update(zip(chunk, pixels))
    return images


def blend(pixels: np.ndarray, heat: np.ndarray, cmap: ListedColormap) -> np.ndarray:
    """A (g, g) map in [0, 1] laid over uint8 pixels (S, S, 3), patch by patch, with the colormap's alpha."""
    cells = np.arange(pixels.shape[0]) * heat.shape[0] // pixels.shape[0]
    colour = cmap(heat[np.ix_(cells, cells)])
    alpha = colour[..., 3:]
    return (pixels * (1 - alpha) + colour[..., :3] * 255 * alpha).astype(np.uint8)


@dataclass(frozen=True)
class TargetViews:
    """What a person sees of a feature's shown targets: activation and ERF heat in [0, 1] (k, g, g) and both peaks
    as (row, col) patches (no activation peak where the target fires on no patch, e.g. at the CLS token only)."""

    heat_act: np.ndarray
    heat_erf: np.ndarray
    act_peaks: list[tuple[int, int] | None]
    erf_peaks: list[tuple[int, int]]


def target_views(targets: LayerTargets, n: int, cols: np.ndarray) -> TargetViews:
    """The views of feature row `n`'s target columns `cols` (shared by galleries, the labelling page, Figs 1/4)."""
    act = np.clip(targets.act[n, cols], 0, None)
    heat_act = act / np.maximum(act.max(axis=(-2, -1), keepdims=True), 1e-12)
    heat_erf = evidence(np.nan_to_num(targets.erf[n, cols]))
    heat_erf = heat_erf / np.maximum(heat_erf.max(axis=(-2, -1), keepdims=True), 1e-12)
    act_rows, act_cols = peak(act)
    erf_rows, erf_cols = peak(heat_erf)
    fires = act.max(axis=(-2, -1)) > 0
    return TargetViews(
        heat_act,
        heat_erf,
        [(int(r), int(c)) if f else None for r, c, f in zip(act_rows, act_cols, fires)],
        [(int(r), int(c)) for r, c in zip(erf_rows, erf_cols)],
    )


@dataclass
class Panel:
    """One half of a pair: the image, a map over it, and both peaks."""

    ax: object
    image: object
    act_mark: object
    erf_mark: object
    title: object

    @classmethod
    def build(cls, ax, grid: int) -> Panel:
        extent = (-0.5, grid - 0.5, grid - 0.5, -0.5)  # patch (row, col) = data (y, x)
        image = ax.imshow(np.zeros((2, 2, 3), np.uint8), extent=extent, interpolation="nearest")
        act_mark = ax.plot([], [], "o", ms=11, mfc="none", mec="white", mew=2, path_effects=OUTLINE)[0]
        erf_mark = ax.plot([], [], "x", ms=9, color="cyan", mew=2.2, path_effects=OUTLINE)[0]
        ax.set_axis_off()
        # a plain text, not set_title: titles re-measure the axes at every draw
        title = ax.text(0.5, 1.02, "", transform=ax.transAxes, ha="center", va="bottom", fontsize=7)
        return cls(ax, image, act_mark, erf_mark, title)

    def show(self, pixels: np.ndarray, act_at: tuple[int, int] | None, erf_at: tuple[int, int], title: str) -> None:
        self.ax.set_visible(True)
        self.image.set_data(pixels)
        self.act_mark.set_data([act_at[1]] if act_at else [], [act_at[0]] if act_at else [])
        self.erf_mark.set_data([erf_at[1]], [erf_at[0]])
        self.title.set_text(title)


class GalleryFigure:
    """A reusable figure of `k` (activation, ERF) pairs for one layer's grid."""

    def __init__(self, k: int, grid: int, images: dict[int, np.ndarray], method: str):
        cols = min(k, PAIRS_PER_ROW)
        rows = math.ceil(k / cols)
        self.figure = Figure(figsize=(2 * cols * PANEL_INCHES, rows * (PANEL_INCHES + 0.3) + 0.55))
        FigureCanvasAgg(self.figure)
        widths = [1, 1, 0.12] * (cols - 1) + [1, 1]  # a thin spacer column between pairs
        spaced = self.figure.subplots(rows, 3 * cols - 1, squeeze=False, width_ratios=widths)
        for ax in spaced[:, 2::3].flat:
            ax.remove()
        axes = np.delete(spaced, np.s_[2::3], axis=1)
        self.figure.subplots_adjust(
            left=0.01,
            right=0.99,
            top=1 - 0.45 / self.figure.get_figheight(),
            bottom=0.25 / self.figure.get_figheight(),
            wspace=0.04,
            hspace=0.3,
        )
        slots = [axes[i // cols, 2 * (i % cols) :][:2] for i in range(k)]
        self.pairs = [(Panel.build(act_ax, grid), Panel.build(erf_ax, grid)) for act_ax, erf_ax in slots]
        for ax in axes.flat[2 * k :]:
            ax.remove()
        self.title = self.figure.suptitle("", fontsize=10, fontweight="bold")
        legend = (
            f"each pair: activation map | ERF ({method});  ○ activation peak  × ERF peak;  "
            "out = ERF mass outside the activated patches, d = peak-to-ERF-centre distance"
        )
        self.figure.text(0.5, 0.01, legend, ha="center", va="bottom", fontsize=7, color="0.3")
        self.grid, self.images, self.cmap = grid, images, overlay_cmap()

    def draw(
        self, targets: LayerTargets, n: int, cols: np.ndarray, scores: MapScores, title: str, suggest: bool
    ) -> None:
        """Fill the figure with feature row `n` of `targets` (its shown target columns `cols`)."""
        self.title.set_text(title)
        self.title.set_color("firebrick" if suggest else "black")
        views = target_views(targets, n, cols) if len(cols) else None  # a feature that never fired: empty panels
        for slot, (act_panel, erf_panel) in enumerate(self.pairs):
            if slot >= len(cols):
                act_panel.ax.set_visible(False)
                erf_panel.ax.set_visible(False)
                continue
            j = cols[slot]
            pixels = self.images[int(targets.image[n, j])]
            act_at, erf_at = views.act_peaks[slot], views.erf_peaks[slot]
            at = targets.layout.label(int(targets.token[n, j]))
            act_panel.show(
                blend(pixels, views.heat_act[slot], self.cmap),
                act_at,
                erf_at,
                f"#{j + 1} img {targets.image[n, j]} z={targets.value[n, j]:.3g} {at}",
            )
            erf_panel.show(
                blend(pixels, views.heat_erf[slot], self.cmap),
                act_at,
                erf_at,
                f"ERF  out {scores.outside[n, j]:.2f}  d {scores.distance[n, j]:.2f}",
            )

    def save(self, path: Path) -> None:
        """Write the current feature's gallery atomically."""
        with atomic_path(path) as tmp:
            self.figure.savefig(tmp, dpi=DPI, format="png", pil_kwargs={"compress_level": 1})


def feature_title(targets: LayerTargets, n: int, score: float, threshold: float) -> tuple[str, bool]:
    """The line a person reads first: which feature, its score, and what the score suggests."""
    suggest = bool(score > threshold)
    verdict = f"score {score:.2f} → suggests {'NON-LOCAL' if suggest else 'local'}"
    if np.isnan(score):
        verdict = "no valid target"
    cls = "  ·  CLS-only" if targets.cls_only[n] else ""
    return f"layer {targets.layer} · feature {targets.feature[n]}  ·  {verdict} (threshold {threshold}){cls}", suggest


def render_galleries(
    targets: LayerTargets,
    per_target: MapScores,
    per_feature: MapScores,
    images: dict[int, np.ndarray],
    paths: list[Path],
    k: int,
    threshold: float,
) -> None:
    """Write one gallery PNG per feature row of `targets` to `paths`."""
    canvas = GalleryFigure(k, targets.grid, images, targets.method)
    for n, cols in enumerate(tqdm(shown_targets(targets, k), desc=f"galleries layer {targets.layer}", unit="feature")):
        score = round(float(per_feature.score[n]), 4)  # as the sheet rounds it, so both suggest the same
        title, suggest = feature_title(targets, n, score, threshold)
        canvas.draw(targets, n, cols, per_target, title, suggest)
        canvas.save(paths[n])
    log.info("wrote %d galleries to %s", len(paths), paths[0].parent if paths else "-")
