"""The paper's qualitative figures. Fig 1: local features (top) against non-local ones (bottom), each a row of top
images with its activation map. Fig 4: non-local features across layers, each a column of image | activation map |
ERF at the feature's highest activation.

Which features: per layer, by people's majority vote where a layer has human labels, else by the automatic score
(both stated in the figure and in the table beside it); within either, the most non-local (or, for Fig 1's top
rows, the most local) by score first. The tables are the selection; tests check them, not pixels.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cafe.annotation.config import AnnotationConfig
from cafe.annotation.fig5 import automatic_labels, human_votes, read_inputs
from cafe.annotation.gallery import Panel, blend, load_indexed_images, overlay_cmap, target_views
from cafe.annotation.layer_maps import LayerTargets, read_layer
from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.io import save_figure, write_csv
from cafe.io.manifest import read_manifest

log = logging.getLogger(__name__)

SHOW_SIZE = 160
FIG1_IMAGES = 4
FIG4_COLUMNS = 8
PANEL = 1.25  # inches per image at print size
SOURCES = {"human": "human majority", "automatic": "automatic score"}
TABLE_COLUMNS = ("figure", "position", "group", "layer", "feature", "source", "score", "cls_only")


def layer_labels(sheet: pd.DataFrame, answers: dict, threshold: float) -> tuple[pd.Series, str]:
    """Yes/no per feature and where they come from: people's majority if the layer has any, else the score."""
    votes = human_votes(sheet, answers)
    decided = votes["majority"].dropna().astype(bool)
    if len(decided):
        return decided, "human"
    return automatic_labels(sheet, threshold), "automatic"


def _ranked(sheet: pd.DataFrame, labels: pd.Series, non_local: bool, source: str) -> pd.DataFrame:
    """The sheet's features with label `non_local`, most non-local (or most local) by score first."""
    chosen = labels[labels == non_local].index
    rows = sheet[sheet["feature"].isin(chosen)].assign(source=source, group="non-local" if non_local else "local")
    return rows.sort_values(["score", "feature"], ascending=[not non_local, True], na_position="last")


def _table(rows: pd.DataFrame, figure: str) -> pd.DataFrame:
    rows = rows.assign(figure=figure, position=np.arange(len(rows)), score=rows["score"].round(4))
    return rows[list(TABLE_COLUMNS)].reset_index(drop=True)


def select_fig4(pairs: list, threshold: float, per_layer: int) -> pd.DataFrame:
    """Per layer, up to `per_layer` non-local features (human majority where labelled, else score)."""
    parts = []
    for sheet, answers in pairs:
        labels, source = layer_labels(sheet, answers, threshold)
        parts.append(_ranked(sheet, labels, True, source).head(per_layer))
    return _table(pd.concat(parts), "fig4")


def select_fig1(pairs: list, threshold: float, per_group: int) -> pd.DataFrame:
    """The `per_group` most local features (top rows) and most non-local ones (bottom rows), over all layers."""
    groups = {True: [], False: []}
    for sheet, answers in pairs:
        labels, source = layer_labels(sheet, answers, threshold)
        for non_local in groups:
            groups[non_local].append(_ranked(sheet, labels, non_local, source))
    local = pd.concat(groups[False]).sort_values(["score", "layer", "feature"]).head(per_group)
    nonlocal_ = pd.concat(groups[True]).sort_values(["score", "layer", "feature"], ascending=[False, True, True])
    return _table(pd.concat([local, nonlocal_.head(per_group)]), "fig1")


@dataclass
class Shown:
    """Per layer: its targets, and the images the figure needs."""

    targets: dict[int, LayerTargets]
    images: dict[int, np.ndarray]

    def first_target(self, layer: int, feature: int) -> tuple[LayerTargets, int, np.ndarray]:
        """(targets, feature row, valid target columns in order of activation)."""
        targets = self.targets[layer]
        n = int(np.flatnonzero(targets.feature == feature)[0])
        return targets, n, np.flatnonzero(targets.valid[n])


def load_shown(selection: pd.DataFrame, layer_files: dict[int, tuple[Path, Path]], n_features: dict[int, int],
               manifest: Path, images_root: Path, per_feature: int) -> Shown:  # fmt: skip
    """Read the selected layers' targets and load only the images the figure shows."""
    layers = selection["layer"].unique()
    targets = {layer: read_layer(*layer_files[layer], layer, n_features[layer]) for layer in layers}
    shown = Shown(targets, {})
    wanted = set()
    for row in selection.itertuples():
        layer_targets, n, cols = shown.first_target(row.layer, row.feature)
        wanted |= {int(layer_targets.image[n, j]) for j in cols[:per_feature]}
    crops = {layer_targets.crop for layer_targets in targets.values()}
    if len(crops) > 1:
        raise CafeError(
            f"ERF files of layers {sorted(layers)} record different model crops {crops}: re-run the erf step"
        )
    paths = dict(zip(*read_manifest(manifest)[["index", "path"]].to_numpy().T))
    shown.images = load_indexed_images(sorted(wanted), images_root, paths, crops.pop(), SHOW_SIZE) if crops else {}
    return shown


def _draw(ax, targets: LayerTargets, n: int, j: int, pixels: np.ndarray, kind: str) -> None:
    """One panel: the image, or it under its activation map or ERF, with both peaks marked on the maps."""
    views = target_views(targets, n, np.array([j]))
    panel = Panel.build(ax, targets.grid)
    if kind != "image":
        pixels = blend(pixels, (views.heat_act if kind == "act" else views.heat_erf)[0], overlay_cmap())
    panel.show(pixels, views.act_peaks[0] if kind != "image" else None, views.erf_peaks[0], "")
    if kind != "erf":
        panel.erf_mark.set_data([], [])


def plot_fig4(selection: pd.DataFrame, shown: Shown) -> Figure:
    """Columns: the selected features by layer; rows: image | activation map (○ peak) | ERF (× peak, ○ too)."""
    columns = min(FIG4_COLUMNS, max(1, len(selection)))
    blocks = max(1, math.ceil(len(selection) / columns))
    fig = Figure(figsize=(columns * PANEL + 0.7, blocks * (3 * PANEL + 0.55) + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3 * blocks, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, row in enumerate(selection.itertuples()):
        block, col = divmod(i, columns)
        targets, n, cols = shown.first_target(row.layer, row.feature)
        pixels = shown.images[int(targets.image[n, cols[0]])]
        for r, kind in enumerate(("image", "act", "erf")):
            _draw(axes[3 * block + r, col], targets, n, cols[0], pixels, kind)
        cls = "\nCLS token" if row.cls_only else ""
        who = "people" if row.source == "human" else "score"
        axes[3 * block, col].set_title(f"layer {row.layer} · #{row.feature}\n({who}){cls}", fontsize=7.5)
    for block in range(blocks):
        for r, name in enumerate(("image", "activation ○", "ERF ×")):
            axes[3 * block + r, 0].text(-0.08, 0.5, name, transform=axes[3 * block + r, 0].transAxes,
                                        rotation=90, ha="right", va="center", fontsize=8)  # fmt: skip
    picked = ", ".join(f"layer {layer}: {SOURCES[s]}" for layer, s in _sources(selection)) or "none found"
    fig.suptitle(f"Non-local SAE features at their highest activation (picked by {picked})", fontsize=9)
    fig.subplots_adjust(left=0.6 / fig.get_figwidth(), right=0.99, top=1 - 0.75 / fig.get_figheight(),
                        bottom=0.02, wspace=0.05, hspace=0.12)  # fmt: skip
    if selection.empty:
        fig.text(0.5, 0.5, "no non-local feature found", ha="center")
    return fig


def _sources(selection: pd.DataFrame) -> list[tuple[int, str]]:
    return list(selection.drop_duplicates("layer")[["layer", "source"]].itertuples(index=False, name=None))


def plot_fig1(selection: pd.DataFrame, shown: Shown) -> Figure:
    """Rows: local features (top), then non-local ones (bottom); each row a feature's top images under its
    activation map (○ the peak)."""
    rows = max(1, len(selection))
    fig = Figure(figsize=(FIG1_IMAGES * PANEL + 1.6, rows * PANEL + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, FIG1_IMAGES, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, row in enumerate(selection.itertuples()):
        targets, n, cols = shown.first_target(row.layer, row.feature)
        for k, j in enumerate(cols[:FIG1_IMAGES]):
            _draw(axes[i, k], targets, n, j, shown.images[int(targets.image[n, j])], "act")
        who = "people" if row.source == "human" else "score"
        colour = "#b03a2e" if row.group == "non-local" else "#1f618d"
        label = f"{row.group}\nlayer {row.layer} · #{row.feature}\n({who})"
        axes[i, 0].text(-0.08, 0.5, label, transform=axes[i, 0].transAxes, ha="right", va="center", fontsize=7.5,
                        color=colour)  # fmt: skip
    fig.suptitle("Top-activating images of local (top) and non-local (bottom) SAE features", fontsize=9)
    fig.subplots_adjust(left=1.5 / fig.get_figwidth(), right=0.99, top=1 - 0.45 / fig.get_figheight(),
                        bottom=0.02, wspace=0.05, hspace=0.08)  # fmt: skip
    groups = selection["group"].tolist()
    for i in range(1, len(groups)):
        if groups[i] != groups[i - 1]:  # a rule between the local and the non-local rows
            y = (axes[i - 1, 0].get_position().y0 + axes[i, 0].get_position().y1) / 2
            fig.add_artist(Line2D([0.02, 0.99], [y, y], color="0.3", lw=1, transform=fig.transFigure))
    return fig


FIGURES = {
    "fig1": (select_fig1, plot_fig1, "fig1_per_group", FIG1_IMAGES),
    "fig4": (select_fig4, plot_fig4, "fig4_per_layer", 1),
}


def make_examples(
    name: str,
    sheets: list[Path],
    features: list[Path],
    erf: list[Path],
    annotations_dir: Path,
    manifest: Path,
    images_root: Path,
    config: AnnotationConfig,
    out_figure: Path,
    out_table: Path,
) -> pd.DataFrame:
    """Select, draw and write Fig 1 or Fig 4 (`name`) and its table; returns the selection."""
    if not len(sheets) == len(features) == len(erf):
        raise CafeError(f"{name}: give one features and one ERF file per sheet (in the same layer order)")
    select, plot, count, per_feature = FIGURES[name]
    pairs = read_inputs(sheets, annotations_dir)
    files = {int(pd.read_csv(s, usecols=["layer"])["layer"].iloc[0]): (f, e) for s, f, e in zip(sheets, features, erf)}
    sizes = {int(sheet["layer"].iloc[0]): len(sheet) for sheet, _ in pairs}
    selection = select(pairs, config.threshold, getattr(config, count))
    figure = plot(selection, load_shown(selection, files, sizes, manifest, images_root, per_feature))
    write_csv(out_table, selection)
    save_figure(out_figure, figure)
    picked = ", ".join(f"layer {layer}: {source}" for layer, source in _sources(selection))
    log.info("%s: %d features (%s)", name, len(selection), picked)
    return selection


def run_fig1(args: argparse.Namespace) -> None:
    """`cafe fig1`."""
    _run(args)


def run_fig4(args: argparse.Namespace) -> None:
    """`cafe fig4`."""
    _run(args)


def _run(args: argparse.Namespace) -> None:
    config = parse_section(AnnotationConfig, args.params, "annotation")
    make_examples(args.command, args.sheets, args.features, args.erf, args.annotations_dir, args.manifest,
                  args.images_root, config, args.out_figure, args.out_table)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    """`cafe fig1` and `cafe fig4`: the qualitative figures."""
    helps = {"fig1": "Fig 1: local features (top) vs non-local ones (bottom)",
             "fig4": "Fig 4: non-local features across layers, image | activation | ERF"}  # fmt: skip
    for name, text in helps.items():
        cmd = subparsers.add_parser(name, help=text)
        cmd.add_argument("--sheets", type=Path, nargs="+", required=True, help="results/annotation/sheets/layer{L}.csv")
        cmd.add_argument("--features", type=Path, nargs="+", required=True, help="results/features/layer{L}.h5 ...")
        cmd.add_argument("--erf", type=Path, nargs="+", required=True, help="results/erf/layer{L}/attnlrp.h5 ...")
        cmd.add_argument("--annotations-dir", type=Path, default=Path("data/annotations"))
        cmd.add_argument("--manifest", type=Path, required=True)
        cmd.add_argument("--images-root", type=Path, required=True)
        cmd.add_argument("--params", default="{}", help="the annotation section of params.yaml, as JSON")
        cmd.add_argument("--out-figure", type=Path, required=True)
        cmd.add_argument("--out-table", type=Path, required=True)
        cmd.set_defaults(func=run_fig1 if name == "fig1" else run_fig4)
