"""The layer x method summary of ground-truth scores, its figure and its DVC metrics."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BASELINES = {
    "activation": dict(color="black", linestyle="--", marker="s"),
    "chance": dict(color="grey", linestyle=":", marker=""),
}
PANELS = (
    ("mass_in", "positive mass on the cause"),
    ("hit", "pointing game (peak on the cause)"),
    ("weakest_part", "weakest part share\n(compositional causes)"),
)


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean scores per (layer, method), plus a `chance` row per layer (a uniform map)."""
    grouped = scores.groupby(["layer", "method"], sort=True)
    table = grouped[["mass_in", "hit", "weakest_part"]].mean()
    table["targets"] = grouped["mass_in"].count()
    table["features"] = grouped["feature"].nunique()
    table = table.reset_index()
    per_target = scores.drop_duplicates(["layer", "feature", "slot"])
    floor = (
        per_target.groupby("layer")
        .agg(mass_in=("chance", "mean"), targets=("chance", "size"), features=("feature", "nunique"))
        .reset_index()
    )
    floor["hit"], floor["method"] = floor["mass_in"], "chance"
    columns = ["layer", "method", "targets", "features", "mass_in", "hit", "weakest_part"]
    return pd.concat([table, floor], ignore_index=True)[columns].sort_values(["layer", "method"], ignore_index=True)


def figure(summary: pd.DataFrame) -> Figure:
    """One panel per score, layers on x, one line per method; activation and chance drawn as baselines."""
    fig = Figure(figsize=(4.2 * len(PANELS), 3.6))  # no pyplot: no global backend switch, nothing left open
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS), sharex=True)
    for ax, (column, title) in zip(axes, PANELS):
        for method, rows in summary.groupby("method"):
            if rows[column].notna().any():
                style = BASELINES.get(method, dict(marker="o"))
                ax.plot(rows["layer"], rows[column], label=method, **style)
        ax.set(title=title, xlabel="layer", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    if summary.empty:
        axes[0].text(0.5, 0.5, "no target with a known cause", ha="center", transform=axes[0].transAxes)
    else:
        axes[0].set_xticks(sorted(summary["layer"].unique()))
        axes[-1].legend(fontsize=8, loc="best")
    fig.suptitle("ERF vs planted causes (demo world)")
    fig.tight_layout()
    return fig


def metrics(summary: pd.DataFrame) -> dict:
    """Nested JSON for `dvc metrics`: layer -> method -> mass_in / hit / targets (NaN as null)."""

    def clean(value: float) -> float | None:
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 4)

    return {
        f"layer{layer}": {
            row.method: {"mass_in": clean(row.mass_in), "hit": clean(row.hit), "targets": int(row.targets)}
            for row in rows.itertuples()
        }
        for layer, rows in summary.groupby("layer")
    }
