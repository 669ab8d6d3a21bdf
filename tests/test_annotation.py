"""The annotation loop as a person meets it: sheets and galleries, annotate-init, answers, Fig 5, regeneration."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from annotation_world import (  # noqa: F401 (fixtures)
    CLS_FEATURE,
    LAYER,
    N_FEATURES,
    NON_LOCAL,
    annotate,
    fig5,
    project,
    sheets,
    tree_hashes,
    world,
    write_layer,
)
from PIL import Image

from cafe.annotation.agreement import krippendorff_alpha
from cafe.annotation.ingest import annotate_init
from cafe.annotation.score import agreement, map_scores
from cafe.cli import main
from cafe.errors import CafeError


def test_score_is_high_for_distant_peaks_and_low_for_coincident_ones() -> None:
    act, near, far = np.zeros((3, 8, 8))
    act[1, 1], near[1, 1], far[6, 6] = 1.0, 1.0, 1.0
    scores = map_scores(np.stack([act, act]), np.stack([near, far]))
    assert scores.score[0] < 0.1 and scores.score[1] > 0.9


def test_a_diffuse_activation_map_does_not_hide_a_distant_erf() -> None:
    act = np.full((8, 8), 0.8)
    act[1, 1] = 1.0
    erf = np.zeros((8, 8))
    erf[6, 6] = 1.0
    assert map_scores(act, erf).outside > 0.9


def test_a_cls_only_firing_has_no_spatial_anchor_so_scores_non_local() -> None:
    erf = np.zeros((8, 8))
    erf[2, 2] = 1.0
    assert map_scores(np.zeros((8, 8)), erf).score == 1.0


def test_agreement_is_cohens_kappa_precision_and_recall() -> None:
    human, auto = [True, True, False, False], [True, False, False, False]  # p_o 0.75, p_e 0.5
    assert agreement(human, auto) == {"n": 4, "kappa": 0.5, "precision": 1.0, "recall": 0.5}
    assert agreement([False, False], [False, False])["kappa"] is None  # undefined when nobody ever says yes


def test_sheet_has_a_row_per_feature_with_suggestion_gallery_and_empty_answers(project: Path) -> None:
    sheet = pd.read_csv(project / f"results/annotation/sheets/layer{LAYER}.csv", keep_default_na=False)
    assert list(sheet["feature"]) == list(range(N_FEATURES))
    assert set(sheet.loc[sheet["suggested"] == "yes", "feature"]) == set(NON_LOCAL)
    cls_row = sheet.loc[sheet["feature"] == CLS_FEATURE].iloc[0]
    assert cls_row["cls_only"] and cls_row["act_peak_row"] == cls_row["act_peak_col"] == ""  # no patch fires
    assert (sheet["non_local"] == "").all() and (sheet["note"] == "").all()
    assert sheet["top_images"].str.count(";").max() == 2
    for gallery in sheet["gallery"]:
        assert Image.open(gallery).size[0] > 300


def test_html_index_links_every_gallery_relative_to_itself(project: Path) -> None:
    page = project / f"results/annotation/index/layer{LAYER}.html"
    sources = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert len(sources) == N_FEATURES
    assert all(not Path(src).is_absolute() and (page.parent / src).is_file() for src in sources)


def test_simulated_annotator_gets_fig5_counts(project: Path) -> None:
    forms = ["Yes", "y", "TRUE", "1"]
    answers = {f: forms[i % 4] if f in NON_LOCAL else "no" for i, f in enumerate(range(N_FEATURES))}
    answers[0] = "yes"  # one disagreement with the score
    annotate(project, answers)
    table = fig5(project).set_index("source")
    assert table.loc["human", "n_non_local"] == len(NON_LOCAL) + 1
    assert table.loc["human", "status"] == "annotated"
    assert table.loc["automatic", "n_non_local"] == len(NON_LOCAL)
    metrics = json.loads((project / "results/metrics/annotation.json").read_text())
    assert metrics["overall"] == agreement(
        np.isin(range(N_FEATURES), [0, *NON_LOCAL]), np.isin(range(N_FEATURES), NON_LOCAL)
    )
    assert metrics["overall"]["precision"] == 1.0 and metrics["overall"]["recall"] == 0.75
    assert (project / "results/figures/fig5_nonlocal.png").stat().st_size > 10_000


def test_several_annotators_count_by_majority_with_ties_spread_and_agreement_stated(project: Path) -> None:
    annotate(project, {0: "yes", 1: "yes", 2: "no", 3: "no", 4: "yes", 5: "no"})  # the top-level file: one person
    annotate(project, {0: "yes", 1: "yes", 2: "no", 3: "yes", 4: "unsure"}, "alice")
    annotate(project, {0: "no", 1: "yes", 2: "no", 3: "yes"}, "bob")
    table = fig5(project)
    human = table.set_index("source").loc["human"]
    # majority: 0 yes (2:1), 1 yes, 2 no, 3 yes (2:1), 4 yes (1 label), 5 no (1 label); 6 and 7 unlabelled
    assert (human["n_labelled"], human["n_non_local"], human["n_ties"], human["n_annotators"]) == (6, 4, 0, 3)
    assert human["status"] == "partial"
    people = table[table["source"] == "annotator"].set_index("annotator")["n_non_local"].to_dict()
    assert people == {"layer3.csv": 3, "alice/layer3.csv": 3, "bob/layer3.csv": 2}
    metrics = json.loads((project / "results/metrics/annotation.json").read_text())
    layer = metrics["layers"][f"layer{LAYER}"]
    assert layer["coverage"] == {
        "n_features": N_FEATURES, "n_annotators": 3, "labelled_by_none": 2, "labelled_by_one": 2,
        "labelled_by_two_or_more": 4, "ties": 0,
    }  # fmt: skip
    labels = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 1, 1]], float)  # features 0-3, the top-level file first
    labels[0, 2] = 0
    assert layer["people"]["krippendorff_alpha"] == pytest.approx(krippendorff_alpha(labels), abs=1e-4)
    assert layer["people"]["alpha_n_features"] == 4 and layer["people"]["kappa_n_features"] == 4
    assert layer["automatic_vs_majority"]["n"] == 6
    assert metrics["people"]["krippendorff_alpha"] == layer["people"]["krippendorff_alpha"]


def test_a_tie_between_two_annotators_is_no_label(project: Path) -> None:
    annotate(project, {1: "yes", 2: "yes"}, "alice")
    annotate(project, {1: "yes", 2: "no"}, "bob")
    human = fig5(project).set_index("source").loc["human"]
    assert (human["n_labelled"], human["n_non_local"], human["n_ties"]) == (1, 1, 1)


def test_blank_answers_count_as_not_yet_annotated(project: Path) -> None:
    annotate(project, {1: "yes", 2: "no"})
    human = fig5(project).set_index("source").loc["human"]
    assert (human["status"], human["n_labelled"], human["n_non_local"]) == ("partial", 2, 1)


def test_annotate_init_refuses_to_overwrite(project: Path) -> None:
    path = annotate(project, {1: "yes"})
    before = path.read_bytes()
    with pytest.raises(CafeError, match="already exists"):
        annotate_init(LAYER, project / "results/annotation/sheets", project / "data/annotations")
    assert path.read_bytes() == before


def test_layer_without_human_file_is_not_annotated_and_still_scored(project: Path) -> None:
    table = fig5(project).set_index("source")
    assert table.loc["human", "status"] == "not annotated" and pd.isna(table.loc["human", "n_non_local"])
    assert table.loc["automatic", "n_non_local"] == len(NON_LOCAL)
    metrics = json.loads((project / "results/metrics/annotation.json").read_text())
    assert metrics["layers"][f"layer{LAYER}"]["status"] == "not annotated" and metrics["overall"]["kappa"] is None


def test_regenerating_with_the_same_sae_carries_answers_into_the_sheet(project: Path) -> None:
    annotate(project, {1: "yes", 2: "no"})
    sheet = pd.read_csv(
        sheets(project / "results", project / "images", project / "data/annotations"), keep_default_na=False
    )
    assert list(sheet.loc[sheet["feature"].isin([1, 2]), "non_local"]) == ["yes", "no"]


def test_regenerating_after_an_sae_change_marks_answers_stale_and_leaves_data_untouched(project: Path) -> None:
    human = annotate(project, {1: "yes", 2: "no", 4: "y"})
    data_before = tree_hashes(project / "data")
    write_layer(project / "results", n_images=16, fingerprint="sae000000002")
    sheet_path = sheets(project / "results", project / "images", project / "data/annotations")
    assert tree_hashes(project / "data") == data_before
    sheet = pd.read_csv(sheet_path, keep_default_na=False).set_index("feature")
    assert (sheet["sae_fingerprint"] == "sae000000002").all() and (sheet["non_local"] == "").all()
    for feature, answer in {1: "yes", 2: "no", 4: "y"}.items():
        assert sheet.loc[feature, "previous_answer"] == f"stale (SAE sae000000001): {answer}"
    with pytest.raises(CafeError, match=r"layer3\.csv:2: column 'sae_fingerprint': value 'sae000000001'"):
        fig5(project)
    human.rename(human.with_suffix(".old"))
    annotate_init(LAYER, project / "results/annotation/sheets", project / "data/annotations")
    assert "stale (SAE sae000000001): yes" in human.read_text()


def test_cli_runs_the_workflow_commands(project: Path, capsys: pytest.CaptureFixture) -> None:
    out, annotations = project / "results", str(project / "data/annotations")
    sheets_dir = str(out / "annotation/sheets")
    assert (
        main(
            [
                "sheets",
                "--params",
                json.dumps({"n_features": 4, "gallery_k": 2}),
                "--layer",
                str(LAYER),
                "--features",
                str(out / f"features/layer{LAYER}.h5"),
                "--erf",
                str(out / f"erf/layer{LAYER}/attnlrp.h5"),
                "--manifest",
                str(out / "data/manifest.csv"),
                "--images-root",
                str(project / "images"),
                "--annotations-dir",
                annotations,
                "--out-sheet",
                f"{sheets_dir}/layer{LAYER}.csv",
                "--out-galleries",
                str(out / f"annotation/galleries/layer{LAYER}"),
                "--out-index",
                str(out / f"annotation/index/layer{LAYER}.html"),
            ]
        )
        == 0
    )
    init = ["annotate-init", "--layer", str(LAYER), "--sheets-dir", sheets_dir, "--annotations-dir", annotations]
    assert main(init) == 0 and main(init) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        main(
            [
                "fig5",
                "--params",
                "{}",
                "--sheets",
                f"{sheets_dir}/layer{LAYER}.csv",
                "--annotations-dir",
                annotations,
                "--out-figure",
                str(out / "f.png"),
                "--out-table",
                str(out / "t.csv"),
                "--metrics",
                str(out / "m.json"),
            ]
        )
        == 0
    )
    assert pd.read_csv(out / "t.csv")["n_features"].eq(4).all()


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"layer": LAYER + 1}, "ERF maps of layer 4, but .*layer3.h5 is layer 3"),
        ({"sae_fingerprint": "sae000000002"}, "ERF maps of SAE sae000000002, but .* is of SAE sae000000001"),
    ],
)
def test_sheets_refuse_erf_maps_of_another_layer_or_sae(project: Path, attrs: dict, message: str) -> None:
    import h5py

    erf = project / f"results/erf/layer{LAYER}/attnlrp.h5"
    with h5py.File(erf, "a") as handle:
        handle.attrs.update(attrs)
    before = tree_hashes(project / "results/annotation")
    with pytest.raises(CafeError, match=message):
        sheets(project / "results", project / "images")
    assert tree_hashes(project / "results/annotation") == before
