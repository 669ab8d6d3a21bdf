"""Fig 1 and Fig 4: which features they show (people's majority where a layer has labels, else the score), and
that the drawn panels are those features. The selection is asserted, not pixels."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from annotation_world import CLS_FEATURE, CONFIG, LAYER, annotate, project, world  # noqa: F401 (fixtures)

from cafe.annotation.examples import load_shown, make_examples, plot_fig4


def examples(project: Path, name: str) -> pd.DataFrame:
    results = project / "results"
    return make_examples(
        name,
        [results / f"annotation/sheets/layer{LAYER}.csv"],
        [results / f"features/layer{LAYER}.h5"],
        [results / f"erf/layer{LAYER}/attnlrp.h5"],
        project / "data/annotations",
        results / "data/manifest.csv",
        project / "images",
        CONFIG,
        results / f"figures/{name}_examples.png",
        results / f"tables/{name}_examples.csv",
    )


def test_fig4_without_labels_picks_the_highest_scores_and_says_so(project: Path) -> None:
    chosen = examples(project, "fig4")
    # the world's non-local features are 1, 4 and 6; 6 fires at CLS only, which scores 1.0
    assert chosen[["feature", "source", "group"]].values.tolist() == [
        [CLS_FEATURE, "automatic", "non-local"],
        [1, "automatic", "non-local"],
    ]
    assert chosen["cls_only"].tolist() == [True, False]
    on_disk = pd.read_csv(project / "results/tables/fig4_examples.csv")
    assert on_disk["feature"].tolist() == chosen["feature"].tolist()
    assert (project / "results/figures/fig4_examples.png").stat().st_size > 10_000


def test_fig4_follows_the_peoples_majority_where_a_layer_has_labels(project: Path) -> None:
    annotate(project, {0: "yes", 2: "yes", 6: "no"}, "alice")
    annotate(project, {0: "yes", 2: "no", 6: "no"}, "bob")
    annotate(project, {2: "no", 5: "yes"}, "carol")
    chosen = examples(project, "fig4")  # majority yes: 0 (2:0) and 5 (1:0); 2 is 1:2, 6 is 0:2
    assert set(chosen["feature"]) == {0, 5} and set(chosen["source"]) == {"human"}


def test_fig1_puts_local_features_on_top_and_non_local_ones_below(project: Path) -> None:
    chosen = examples(project, "fig1")
    assert chosen["group"].tolist() == ["local"] * 3 + ["non-local"] * 3
    assert set(chosen["feature"][:3]).isdisjoint({1, 4, 6}) and set(chosen["feature"][3:]) == {1, 4, 6}
    local_scores = chosen["score"][:3].tolist()
    assert local_scores == sorted(local_scores)


def test_fig4_panels_show_the_selected_features_in_order(project: Path) -> None:
    chosen = examples(project, "fig4")
    results = project / "results"
    files = {LAYER: (results / f"features/layer{LAYER}.h5", results / f"erf/layer{LAYER}/attnlrp.h5")}
    shown = load_shown(chosen, files, {LAYER: 8}, results / "data/manifest.csv", project / "images", 1)
    figure = plot_fig4(chosen, shown)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert [title.splitlines()[0] for title in titles] == [f"layer {LAYER} · #{f}" for f in chosen["feature"]]
    assert "picked by layer 3: automatic score" in figure.get_suptitle()
