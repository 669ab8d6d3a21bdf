"""End to end: the real DAG on a tiny demo, driven the way users drive it (`dvc repro` over Snakemake).

Copies of the one finished tiny demo go through the life of a study: a first run makes every product; a second
run with nothing edited does nothing; an SAE parameter change reruns the SAEs, not the activations, and leaves
what reads the SAEs stale; an annotator's edit reruns only the figures that read labels (Figs 5, 1 and 4).
"""

from __future__ import annotations

import copy
import json

import h5py
import pandas as pd
import pytest
from workflow_utils import TINY_PARAMS, copy_workspace, mtimes, run, write_params

pytestmark = pytest.mark.e2e

PRODUCTS = (
    "results/figures/fig3_insertion.png",
    "results/figures/fig5_nonlocal.png",
    "results/figures/ground_truth.png",
    "results/figures/compositional.png",
    "results/tables/compositional.csv",
    "results/metrics/compositional.json",
    "results/figures/fig1_examples.png",
    "results/figures/fig4_examples.png",
    "results/tables/insertion_auc.csv",
    "results/metrics/sae.json",
    "results/metrics/insertion.json",
    "results/annotation/sheets/layer3.csv",
    "results/annotation/index/layer3.html",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory, finished_tiny_demo):
    return copy_workspace(finished_tiny_demo, tmp_path_factory.mktemp("study") / "study")


def test_first_run_makes_every_product(study):
    for product in PRODUCTS:
        assert (study / product).is_file(), product
    with h5py.File(study / "results/activations/layer3.h5") as handle:
        assert handle.attrs["layer"] == 3 and handle.attrs["backbone"] == "cafe-tiny-vit"
    auc = pd.read_csv(study / "results/tables/insertion_auc.csv")
    assert {"attnlrp", "ig", "kernelshap", "gradient", "activation", "random"} <= set(auc["method"])
    assert json.loads((study / "results/metrics/sae.json").read_text())
    assert (study / "dvc.lock").is_file()


def test_dvc_plots_show_insertion_auc_per_method_and_canvas(study):
    shown = json.loads(run(["dvc", "plots", "show", "--json", "results/tables/insertion_auc.csv"], study).stdout)
    spec = shown["data"]["results/tables/insertion_auc.csv"][0]["content"]
    assert (
        spec["transform"] == [{"filter": "datum.kind == 'insertion'"}] and spec["facet"]["column"]["field"] == "canvas"
    )
    assert spec["spec"]["encoding"]["color"]["field"] == "method"
    assert {row["method"] for row in spec["data"]["values"]} >= {"attnlrp", "activation", "random"}


def test_unchanged_params_rerun_nothing(study):
    before = mtimes(study, "results/**/*")
    result = run(["dvc", "repro"], study)
    assert "Data and pipelines are up to date" in result.stdout
    assert mtimes(study, "results/**/*") == before


def test_sae_param_change_reruns_saes_but_not_activations(finished_tiny_demo, tmp_path):
    """On a copy of its own, through the SAE stage only: what reads the SAEs is then seen as stale by DVC (the
    same `dvc repro` would rerun it) without spending the whole analysis on showing it."""
    root = copy_workspace(finished_tiny_demo, tmp_path / "study")
    activations = mtimes(root, "results/activations/*.h5")
    saes = mtimes(root, "results/sae/*.pt")
    params = copy.deepcopy(TINY_PARAMS)
    params["sae"]["l1"] = 0.001
    write_params(root, params)
    assert set(json.loads(run(["dvc", "status", "--json"], root).stdout)) == {"sae"}  # only its params changed
    run(["dvc", "repro", "sae"], root)
    assert mtimes(root, "results/activations/*.h5") == activations
    after = mtimes(root, "results/sae/*.pt")
    assert after.keys() == saes.keys() and all(after[k] > saes[k] for k in saes)
    stale = set(json.loads(run(["dvc", "status", "--json"], root).stdout))
    assert {"analysis", "ground_truth"} <= stale  # the stages that read results/sae (and what follows them)
    assert not stale & {"demo", "manifest", "prepare", "sae"}  # nothing upstream, the SAEs themselves current


def test_annotation_edit_reruns_only_the_figures_that_read_it(study):
    run(
        [
            "cafe",
            "annotate-init",
            "--layer",
            "3",
            "--sheets-dir",
            "results/annotation/sheets",
            "--annotations-dir",
            "data/annotations",
        ],
        study,
    )
    sheet = pd.read_csv(study / "data/annotations/layer3.csv", dtype=str, keep_default_na=False)
    sheet["non_local"] = ["yes" if i % 2 else "no" for i in range(len(sheet))]
    sheet.to_csv(study / "data/annotations/layer3.csv", index=False)
    # Figs 1 and 4 (the examples stage) pick features by people's labels (each product's record rewritten with it)
    readers = ("fig5", "annotation.json", "fig1", "fig4")
    others = {k: v for k, v in mtimes(study, "results/**/*").items() if not any(r in k for r in readers)}
    run(["dvc", "repro"], study)
    assert {k: v for k, v in mtimes(study, "results/**/*").items() if k in others} == others
    counts = pd.read_csv(study / "results/tables/fig5_nonlocal.csv")
    human = counts[(counts["layer"] == 3) & (counts["source"] == "human")].iloc[0]
    assert human["n_labelled"] == len(sheet) and human["n_non_local"] == (sheet["non_local"] == "yes").sum()
    fig4 = pd.read_csv(study / "results/tables/fig4_examples.csv")
    layer3 = fig4[fig4["layer"] == 3]
    labelled_yes = set(sheet[sheet["non_local"] == "yes"]["feature"].astype(int))
    assert set(layer3["source"]) == {"human"} and set(layer3["feature"]) <= labelled_yes


def test_report_holds_the_figures(study):
    run(["snakemake", "--cores", "1", "--report", "report.html"], study)
    html = (study / "report.html").read_text()
    figures = ("fig3_insertion.png", "fig5_nonlocal.png", "ground_truth.png", "compositional.png")
    figures += ("fig1_examples.png", "fig4_examples.png")
    for figure in figures:
        assert figure in html, figure
