"""Fig 5: how many of each layer's first N features are non-local, by human label and by the automatic score.

Every human file is validated before anything is written; a layer without one is "not annotated", not an error.
Outputs: the figure, a tidy counts table (a DVC plot source) and the score's agreement with people (DVC metrics).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cafe.annotation.config import AnnotationConfig
from cafe.annotation.ingest import human_path, read_sheet, validate_human
from cafe.annotation.score import agreement
from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.io import save_figure, write_csv, write_json

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("layer", "source", "status", "n_features", "n_labelled", "n_non_local", "share")
COLOURS = {"human": "#b03a2e", "automatic": "#9aa5b1"}


def read_inputs(sheet_paths: list[Path], annotations_dir: Path) -> list[tuple[pd.DataFrame, pd.DataFrame | None]]:
    """(sheet, validated human answers or None) per layer, sorted by layer; every bad file is reported at once."""
    pairs, problems = [], []
    for path in sheet_paths:
        sheet = read_sheet(path)
        human = human_path(annotations_dir, int(sheet["layer"].iloc[0]))
        try:
            pairs.append((sheet, validate_human(human, sheet, path) if human.is_file() else None))
        except CafeError as exc:
            problems.append(str(exc))
    if problems:
        raise CafeError("annotation files need fixing before Fig 5 (nothing was written):\n" + "\n".join(problems))
    return sorted(pairs, key=lambda pair: int(pair[0]["layer"].iloc[0]))


def _row(layer: int, source: str, status: str, n_features: int, labels: pd.Series) -> dict:
    n_yes = int(labels.sum()) if len(labels) else None
    share = round(n_yes / len(labels), 4) if len(labels) else None
    return {
        "layer": layer,
        "source": source,
        "status": status,
        "n_features": n_features,
        "n_labelled": len(labels),
        "n_non_local": n_yes,
        "share": share,
    }


def labels(sheet: pd.DataFrame, human: pd.DataFrame | None, threshold: float) -> tuple[pd.Series, pd.Series]:
    """Yes/no by feature: automatic for every scored feature, human for every answered one."""
    auto = sheet.dropna(subset=["score"]).set_index("feature")["score"] > threshold
    if human is None:
        return auto, pd.Series(dtype=bool)
    return auto, human[human["non_local"].notna()].set_index("feature")["non_local"].astype(bool)


def summarise(pairs: list[tuple[pd.DataFrame, pd.DataFrame | None]], threshold: float) -> tuple[pd.DataFrame, dict]:
    """The tidy counts table and the agreement metrics (per layer, and pooled over layers)."""
    rows, metrics, human_all, auto_all = [], {}, [], []
    for sheet, human in pairs:
        layer, n = int(sheet["layer"].iloc[0]), len(sheet)
        auto, answered = labels(sheet, human, threshold)
        status = "not annotated" if human is None else "annotated" if len(answered) == n else "partial"
        rows += [_row(layer, "human", status, n, answered), _row(layer, "automatic", "scored", n, auto)]
        both = answered.index.intersection(auto.index)
        human_all.append(answered.loc[both])
        auto_all.append(auto.loc[both])
        metrics[f"layer{layer}"] = {"status": status, **agreement(answered.loc[both], auto.loc[both])}
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS)).astype({"n_non_local": "Int64"})
    overall = agreement(pd.concat(human_all), pd.concat(auto_all))
    return table, {"threshold": threshold, "overall": overall, "layers": metrics}


def _agreement_line(overall: dict, threshold: float) -> str:
    if not overall["n"]:
        return f"automatic: score > {threshold}; no human labels yet"
    fmt = {k: "n/a" if overall[k] is None else f"{overall[k]:.2f}" for k in ("kappa", "precision", "recall")}
    return (
        f"automatic: score > {threshold}; agreement with people on {overall['n']} features: "
        f"κ = {fmt['kappa']}, precision {fmt['precision']}, recall {fmt['recall']}"
    )


def plot_fig5(table: pd.DataFrame, metrics: dict) -> Figure:
    """Grouped bars per layer: human count (or "not annotated") beside the automatic count."""
    layers = sorted(table["layer"].unique())
    x = np.arange(len(layers))
    fig = Figure(figsize=(max(5.0, 0.75 * len(layers) + 2), 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for offset, source in ((-0.2, "human"), (0.2, "automatic")):
        part = table[table["source"] == source].set_index("layer").loc[layers]
        counts = part["n_non_local"].astype("Float64").fillna(0).to_numpy(float)
        bars = ax.bar(
            x + offset,
            counts,
            0.38,
            color=COLOURS[source],
            label=source,
            edgecolor="white",
            hatch=None if source == "human" else "//",
        )
        for bar, row in zip(bars, part.itertuples()):
            missing = row.status == "not annotated"
            top = (bar.get_x() + bar.get_width() / 2, bar.get_height())
            label = (
                "not annotated" if missing else "no answers yet" if pd.isna(row.n_non_local) else str(row.n_non_local)
            )
            missing = missing or pd.isna(row.n_non_local)
            ax.annotate(
                label,
                top,
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90 if missing else 0,
                color="0.35",
            )
    human = table[table["source"] == "human"].set_index("layer").loc[layers]
    ax.set_xticks(
        x,
        [
            f"{layer}\n{r.n_labelled}/{r.n_features} done" if r.status == "partial" else str(layer)
            for layer, r in zip(layers, human.itertuples())
        ],
    )
    ax.set_xlabel("layer")
    sizes = table["n_features"].unique()
    ax.set_ylabel(f"non-local features (of the first {sizes.max()})")
    if len(sizes) == 1:
        share = ax.secondary_yaxis("right", functions=(lambda c: 100 * c / sizes[0], lambda p: p * sizes[0] / 100))
        share.set_ylabel("share (%)")
    ax.set_ylim(0, max(1.0, float(table["n_non_local"].astype("Float64").fillna(0).max())) * 1.35 + 1)
    ax.spines["top"].set_visible(False)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.set_title("Non-local SAE features per layer", fontsize=11, loc="left", pad=16)
    subtitle = _agreement_line(metrics["overall"], metrics["threshold"])
    ax.text(0, 1.02, subtitle, transform=ax.transAxes, fontsize=7.5, color="0.3")
    return fig


def make_fig5(
    sheets: list[Path],
    annotations_dir: Path,
    config: AnnotationConfig,
    out_figure: Path,
    out_table: Path,
    metrics_path: Path,
) -> pd.DataFrame:
    """Validate every human file, then write the figure, the counts table and the agreement metrics."""
    table, metrics = summarise(read_inputs(sheets, annotations_dir), config.threshold)
    figure = plot_fig5(table, metrics)  # drawn before anything is written: a failure leaves the old outputs whole
    write_csv(out_table, table)
    write_json(metrics_path, metrics)
    save_figure(out_figure, figure)
    log.info("Fig 5: %s", _agreement_line(metrics["overall"], config.threshold))
    return table


def run_fig5(args: argparse.Namespace) -> None:
    config = parse_section(AnnotationConfig, args.params, "annotation")
    make_fig5(args.sheets, args.annotations_dir, config, args.out_figure, args.out_table, args.metrics)


def register(subparsers: argparse._SubParsersAction) -> None:
    """`cafe fig5`: ingest human annotations and draw Fig 5."""
    cmd = subparsers.add_parser("fig5", help="validate data/annotations/ and draw Fig 5 (non-local features per layer)")
    cmd.add_argument("--sheets", type=Path, nargs="+", required=True, help="results/annotation/sheets/layer{L}.csv ...")
    cmd.add_argument("--annotations-dir", type=Path, default=Path("data/annotations"))
    cmd.add_argument("--params", default="{}", help="the annotation section of params.yaml, as JSON")
    cmd.add_argument("--out-figure", type=Path, required=True)
    cmd.add_argument("--out-table", type=Path, required=True)
    cmd.add_argument("--metrics", type=Path, required=True)
    cmd.set_defaults(func=run_fig5)
