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

from cafe.annotation.agreement import label_matrix, majority, people_agreement
from cafe.annotation.config import AnnotationConfig
from cafe.annotation.files import human_files
from cafe.annotation.ingest import read_sheet, validate_human
from cafe.annotation.score import agreement
from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.io import save_figure, write_csv, write_json

log = logging.getLogger(__name__)

TABLE_COLUMNS = (
    "layer", "source", "annotator", "status", "n_features", "n_annotators", "n_labelled", "n_ties", "n_non_local",
    "share",
)  # fmt: skip
COLOURS = {"human": "#b03a2e", "automatic": "#9aa5b1"}
Answers = dict[str, pd.DataFrame]  # annotator (file path under data/annotations) -> validated answers


def read_inputs(sheet_paths: list[Path], annotations_dir: Path) -> list[tuple[pd.DataFrame, Answers]]:
    """(sheet, every annotator's validated answers) per layer, sorted by layer; every bad file reported at once."""
    pairs, problems = [], []
    for path in sheet_paths:
        sheet, answers = read_sheet(path), {}
        for name, human in human_files(annotations_dir, int(sheet["layer"].iloc[0])).items():
            try:
                answers[name] = validate_human(human, sheet, path)
            except CafeError as exc:
                problems.append(str(exc))
        pairs.append((sheet, answers))
    if problems:
        raise CafeError("annotation files need fixing before Fig 5 (nothing was written):\n" + "\n".join(problems))
    return sorted(pairs, key=lambda pair: int(pair[0]["layer"].iloc[0]))


def _row(layer: int, source: str, status: str, n_features: int, labels: pd.Series, **extra) -> dict:
    n_yes = int(labels.sum()) if len(labels) else None
    share = round(n_yes / len(labels), 4) if len(labels) else None
    row = {"layer": layer, "source": source, "annotator": "", "status": status, "n_features": n_features}
    return (
        row | {"n_annotators": 0, "n_ties": 0, "n_labelled": len(labels), "n_non_local": n_yes, "share": share} | extra
    )


def automatic_labels(sheet: pd.DataFrame, threshold: float) -> pd.Series:
    """Yes/no by feature for every scored feature."""
    return sheet.dropna(subset=["score"]).set_index("feature")["score"] > threshold


def human_votes(sheet: pd.DataFrame, answers: Answers) -> pd.DataFrame:
    """Per feature of the sheet: every annotator's label (columns) and the majority (see `agreement.majority`)."""
    matrix = label_matrix(sheet["feature"], answers)
    return matrix.join(majority(matrix))


def _layer_rows(layer: int, n: int, answers: Answers, votes: pd.DataFrame, auto: pd.Series) -> list[dict]:
    decided = votes[votes["majority"].notna()]["majority"].astype(bool)
    status = "not annotated" if not answers else "annotated" if len(decided) == n else "partial"
    rows = [
        _row(layer, "human", status, n, decided, n_annotators=len(answers), n_ties=int(votes["tie"].sum())),
        _row(layer, "automatic", "scored", n, auto),
    ]
    for name in answers:
        own = votes[name].dropna().astype(bool)
        rows.append(_row(layer, "annotator", "annotated" if len(own) == n else "partial", n, own, annotator=name))
    return rows


def summarise(pairs: list[tuple[pd.DataFrame, Answers]], threshold: float) -> tuple[pd.DataFrame, dict]:
    """The tidy counts table and the metrics: agreement between people, and of the score with their majority."""
    rows, metrics, human_all, auto_all = [], {}, [], []
    for sheet, answers in pairs:
        layer, n = int(sheet["layer"].iloc[0]), len(sheet)
        auto, votes = automatic_labels(sheet, threshold), human_votes(sheet, answers)
        layer_rows = _layer_rows(layer, n, answers, votes, auto)
        rows += layer_rows
        decided = votes[votes["majority"].notna()]["majority"].astype(bool)
        both = decided.index.intersection(auto.index)
        human_all.append(decided.loc[both])
        auto_all.append(auto.loc[both])
        metrics[f"layer{layer}"] = {
            "status": layer_rows[0]["status"],
            "coverage": _coverage(votes, n, len(answers)),
            "people": people_agreement(votes[list(answers)]),
            "automatic_vs_majority": agreement(decided.loc[both], auto.loc[both]),
        }
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS)).astype({"n_non_local": "Int64"})
    overall = agreement(pd.concat(human_all), pd.concat(auto_all))
    return table, {"threshold": threshold, "overall": overall, "people": _pooled_people(pairs), "layers": metrics}


def _coverage(votes: pd.DataFrame, n: int, n_annotators: int) -> dict:
    """How many features rest on how many labels: the partial coverage and the ties, stated."""
    return {
        "n_features": n,
        "n_annotators": n_annotators,
        "labelled_by_none": int((votes["n_labels"] == 0).sum()),
        "labelled_by_one": int((votes["n_labels"] == 1).sum()),
        "labelled_by_two_or_more": int((votes["n_labels"] >= 2).sum()),
        "ties": int(votes["tie"].sum()),
    }


def _pooled_people(pairs: list[tuple[pd.DataFrame, Answers]]) -> dict:
    """Agreement between people pooled over layers (a feature of a layer is one unit; annotators by folder)."""
    frames = []
    for sheet, answers in pairs:
        matrix = label_matrix(sheet["feature"], answers)
        matrix.columns = [name.rpartition("/")[0] or "(top-level file)" for name in matrix.columns]
        frames.append(matrix.set_axis(pd.MultiIndex.from_product([[int(sheet["layer"].iloc[0])], matrix.index])))
    pooled = pd.concat(frames) if frames else pd.DataFrame()
    return people_agreement(pooled)


def _agreement_line(overall: dict, threshold: float) -> str:
    if not overall["n"]:
        return f"automatic: score > {threshold}; no human labels yet"
    fmt = {k: "n/a" if overall[k] is None else f"{overall[k]:.2f}" for k in ("kappa", "precision", "recall")}
    return (
        f"automatic: score > {threshold}; agreement with people on {overall['n']} features: "
        f"κ = {fmt['kappa']}, precision {fmt['precision']}, recall {fmt['recall']}"
    )


def _people_line(people: dict) -> str:
    """Agreement between annotators, when two or more labelled the same features."""
    if people["krippendorff_alpha"] is None:
        return ""
    ci = people["alpha_ci95"]
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return (
        f"\nbetween {len(people['annotators'])} annotators: Krippendorff's α = {people['krippendorff_alpha']:.2f}"
        f"{interval} (95% bootstrap CI) on {people['alpha_n_features']} features labelled by two or more"
    )


def _tick(layer: int, row) -> str:
    """A layer's tick label, stating partial coverage, ties and how many people answered."""
    lines = [str(layer)]
    if row.status == "partial":
        lines.append(f"{row.n_labelled}/{row.n_features} decided")
    if row.n_ties:
        lines.append(f"{row.n_ties} tie{'s' * (row.n_ties > 1)}")
    if row.n_annotators > 1:
        lines.append(f"{row.n_annotators} people")
    return "\n".join(lines)


def _spread(ax, table: pd.DataFrame, layers: list[int], x: np.ndarray) -> None:
    """Each annotator's own count as a dot over the majority bar, joined by a line (the spread between people)."""
    people = table[table["source"] == "annotator"]
    for position, layer in zip(x, layers):
        counts = people[people["layer"] == layer]["n_non_local"].dropna().astype(float).to_numpy()
        if len(counts) < 2:
            continue
        ax.plot([position, position], [counts.min(), counts.max()], color="black", lw=1, zorder=3)
        ax.plot(np.full(len(counts), position), counts, "o", ms=3.5, color="black", zorder=4)
    if (people.groupby("layer").size() >= 2).any():
        ax.plot([], [], "o-", ms=3.5, lw=1, color="black", label="each annotator (bar: majority)")


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
    _spread(ax, table, layers, x - 0.2)
    human = table[table["source"] == "human"].set_index("layer").loc[layers]
    ax.set_xticks(x, [_tick(layer, r) for layer, r in zip(layers, human.itertuples())])
    ax.set_xlabel("layer")
    sizes = table["n_features"].unique()
    ax.set_ylabel(f"non-local features (of the first {sizes.max()})")
    if len(sizes) == 1:
        share = ax.secondary_yaxis("right", functions=(lambda c: 100 * c / sizes[0], lambda p: p * sizes[0] / 100))
        share.set_ylabel("share (%)")
    ax.set_ylim(0, max(1.0, float(table["n_non_local"].astype("Float64").fillna(0).max())) * 1.35 + 1)  # dots too
    ax.spines["top"].set_visible(False)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    two_lines = metrics["people"]["krippendorff_alpha"] is not None
    ax.set_title("Non-local SAE features per layer", fontsize=11, loc="left", pad=27 if two_lines else 16)
    subtitle = _agreement_line(metrics["overall"], metrics["threshold"]) + _people_line(metrics["people"])
    ax.text(0, 1.02, subtitle, transform=ax.transAxes, fontsize=7.5, color="0.3", va="bottom")
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
