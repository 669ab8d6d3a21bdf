"""Fig 3: insertion (and deletion) AUC against layer, one line per method with its bootstrap CI band, one panel
per canvas; plus the tidy AUC table (DVC plot source) and the insertion metrics (DVC metrics)."""

from __future__ import annotations

import argparse
import logging

import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.insertion.config import InsertionConfig
from cafe.insertion.summary import HIGHER_IS_BETTER, auc_table, greedy_table, insertion_metrics, read_curve_aucs
from cafe.io import save_figure, write_csv, write_json

log = logging.getLogger(__name__)

REFERENCE_STYLE = {
    "activation": {"color": "black", "linestyle": "-", "marker": "s"},
    "random": {"color": "0.55", "linestyle": "--", "marker": "o"},
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe fig3`."""
    p = subparsers.add_parser("fig3", help="Fig 3: insertion AUC per layer and method, with table and metrics")
    p.add_argument("--curves", nargs="+", required=True, help="results/insertion/layer*/{method}.csv")
    p.add_argument("--greedy", nargs="*", default=[], help="results/insertion/layer*/greedy.csv (the ceiling)")
    p.add_argument("--params", default="{}", help="the params.yaml `insertion` section as JSON")
    p.add_argument("--out-table", required=True, help="results/tables/insertion_auc.csv")
    p.add_argument("--out-figure", required=True, help="results/figures/fig3_insertion.png")
    p.add_argument("--metrics", required=True, help="results/metrics/insertion.json")
    p.set_defaults(func=run_fig3)


def run_fig3(args: argparse.Namespace) -> None:
    """Aggregate every curve file, write table, metrics and figure."""
    config = parse_section(InsertionConfig, args.params, "insertion")
    aucs = read_curve_aucs([*args.curves, *args.greedy])
    table = auc_table(aucs, config.bootstrap)
    if table.empty:
        raise CafeError(
            f"fig3: no recoverable curves in {len(args.curves)} curve file(s); lower insertion.min_activation?"
        )
    metrics = insertion_metrics(aucs, table, greedy_table(aucs, config.bootstrap))
    for line in metrics["canvas_disagreements"]:
        log.warning("canvases disagree on the method ranking: %s", line)
    write_csv(args.out_table, table)
    write_json(args.metrics, metrics)
    save_figure(args.out_figure, plot_fig3(table, list(config.canvases)))


def plot_fig3(table: pd.DataFrame, canvases: list[str]) -> Figure:
    """Rows insertion / deletion, columns canvases; AUC against layer per method, references styled apart."""
    kinds = [k for k in HIGHER_IS_BETTER if k in set(table["kind"])]
    canvases = [c for c in canvases if c in set(table["canvas"])] or sorted(set(table["canvas"]))
    fig = Figure(figsize=(4.2 * len(canvases), 3.4 * len(kinds)))
    axes = fig.subplots(len(kinds), len(canvases), squeeze=False, sharex=True, sharey="row")
    methods = _method_order(table)
    colors = dict(zip(sorted(m for m in methods if m not in REFERENCE_STYLE), colormaps["tab10"].colors))  # stable
    for i, kind in enumerate(kinds):
        for j, canvas in enumerate(canvases):
            ax = axes[i, j]
            panel = table[(table["kind"] == kind) & (table["canvas"] == canvas)]
            for method in methods:
                _plot_method(
                    ax,
                    panel[panel["method"] == method].sort_values("layer"),
                    method,
                    REFERENCE_STYLE.get(method, {"color": colors.get(method), "linestyle": "-", "marker": "."}),
                )
            better = "higher" if HIGHER_IS_BETTER[kind] else "lower"
            ax.set_title(f"{kind}, {canvas} canvas", fontsize=10)
            ax.set_ylabel(f"AUC of recovery ({better} = better)" if j == 0 else "")
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if i == len(kinds) - 1:
                ax.set_xlabel("layer")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 7), frameon=False, bbox_to_anchor=(0.5, 1.04))
    fig.tight_layout()
    return fig


def _method_order(rows: pd.DataFrame) -> list[str]:
    """ERF methods by mean insertion AUC (best first), then the activation baseline and the random floor."""
    means = rows[rows["kind"] == "insertion"].groupby("method")["auc_mean"].mean().sort_values(ascending=False)
    erf = [m for m in means.index if m not in REFERENCE_STYLE]
    return erf + [m for m in REFERENCE_STYLE if m in set(rows["method"])]


def _plot_method(ax: Axes, line: pd.DataFrame, method: str, style: dict) -> None:
    """One method: mean with a CI band (error bars when there is a single layer)."""
    if line.empty:
        return
    mean, lo, hi = line["auc_mean"], line["auc_ci_low"], line["auc_ci_high"]
    ax.plot(line["layer"], mean, label=method, markersize=4, linewidth=1.6, **style)
    if len(line) == 1:
        ax.errorbar(line["layer"], mean, yerr=[mean - lo, hi - mean], color=style["color"], capsize=3, linestyle="none")
    else:
        ax.fill_between(line["layer"], lo, hi, color=style["color"], alpha=0.12, linewidth=0)
