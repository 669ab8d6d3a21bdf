"""End to end: an SAE written by SAELens's own save routine (tests/sae_tools.py) on the tiny demo tower's layer 2,
imported by the DAG instead of trained (`sae: {source: ...}`, no train tokens), through Fig 3 and Fig 5 with
one plain `snakemake` run and `dvc commit` (the README's flow) on a copy of the one finished tiny demo (its tower
and images; the new layer's activations are extracted); DVC tracks the imported file by content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file, save_file
from workflow_utils import copy_workspace, run, write_params

from cafe.sae.model import load_sae

LAYER = 2  # the SAELens SAEs of tests/sae_tools_run.py hook blocks.1.hook_resid_post: the residual after block 2
CASE = "topk_layer_norm"  # TopK after SAELens's per-token layer norm: the AttnLRP rule goes through both
# What the imported SAE reaches in this run (the copied demo's other layers and stages are left as they were)
REACHED = [
    f"results/sae/layer{LAYER}.pt",
    f"results/sae/layer{LAYER}.json",
    f"results/features/layer{LAYER}.h5",
    f"results/erf/layer{LAYER}",
    f"results/insertion/layer{LAYER}",
    "results/figures/fig3_insertion.png",
    "results/figures/fig5_nonlocal.png",
]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def imported_study(tmp_path_factory, finished_tiny_demo, sae_tool_run) -> Path:
    spec = sae_tool_run("saelens")[1][CASE]  # the formats test's run: its SAEs have the tiny tower's width
    root = copy_workspace(finished_tiny_demo, tmp_path_factory.mktemp("imported") / "study")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["layers"] = [LAYER]
    params["data"]["n_train"] = 0
    params["erf"]["methods"] = ["attnlrp"]  # its rule goes through the imported encoder's layer norm and TopK
    params["sae"]["source"] = {"format": "saelens", "path": "data/saes/layer{layer}", "options": {}}
    write_params(root, params)
    shutil.copytree(spec["path"], root / "data" / "saes" / f"layer{LAYER}")
    run(["snakemake", "--cores", "2", "fig3", "fig5"], root)  # one DAG load, not one per DVC stage
    run(["dvc", "commit", "-f"], root)
    return root


def test_the_dag_imports_instead_of_training_and_reaches_fig3_and_fig5(imported_study):
    root = imported_study
    for figure in ("fig3_insertion.png", "fig5_nonlocal.png"):
        assert (root / "results" / "figures" / figure).stat().st_size > 0
    for table in ("insertion_auc.csv", "fig5_nonlocal.csv"):  # remade from the imported SAE's layer alone
        assert set(pd.read_csv(root / "results" / "tables" / table)["layer"]) == {LAYER}, table
    assert set(pd.read_csv(root / "results" / "tables" / "insertion_auc.csv")["method"]) >= {"attnlrp", "random"}
    sae, meta = load_sae(root / "results" / "sae" / f"layer{LAYER}.pt")
    assert meta["kind"] == "import" and meta["source"]["format"] == "saelens"
    assert meta["source"]["hook"] == "blocks.1.hook_resid_post" and sae.norm == "layer_norm"
    metrics = json.loads((root / "results" / "sae" / f"layer{LAYER}.json").read_text())
    assert metrics["steps"] == 0 and 0 < metrics["l0"] <= sae.k
    with h5py.File(root / "results" / "activations" / f"layer{LAYER}.h5") as handle:
        assert handle["train"].shape[0] == 0 and handle["analysis"].shape[0] == 24  # no train tokens extracted


def test_the_imported_file_is_tracked_by_content(imported_study):
    root = imported_study
    assert "up to date" in run(["dvc", "status", "sae"], root).stdout
    weights = root / "data" / "saes" / f"layer{LAYER}" / "sae_weights.safetensors"
    before = weights.read_bytes()
    state = load_file(str(weights))
    state["b_enc"] = state["b_enc"] + 0.1
    save_file(state, str(weights))
    try:
        status = run(["dvc", "status", "sae"], root).stdout
        assert "modified" in status and "data/saes" in status, status
        stale = run(["cafe", "verify", *REACHED], root, check=False)  # the import's record names the file's old content
        assert stale.returncode == 1 and f"results/sae/layer{LAYER}.pt" in stale.stdout, stale.stdout
    finally:
        weights.write_bytes(before)
    assert run(["cafe", "verify", *REACHED], root).returncode == 0  # its provenance record: file, format and options
