"""The configs for released SAEs (workflow/configs/): each plans the whole DAG offline with `snakemake -n` (no
weights, no ImageNet), a run without the SAE files stops before its first job naming each path and the download
command, and each states only what differs from the defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from test_params import restated_defaults
from workflow_utils import REPO, make_workspace, run

from cafe.params import defaults, merge, resolve
from cafe.sae.formats import SAESource

CONFIGS = {"saev-clip-vit-b16": 1, "prisma-clip-vit-b32": 12, "patchsae-clip-vit-b16": 1, "saev-dinov2-vitb14": 1}


def config(name: str) -> dict:
    return yaml.safe_load((REPO / "workflow" / "configs" / f"{name}.yaml").read_text())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("released"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_released_sae_config_plans_the_whole_dag_offline(workspace, name):
    result = run(["snakemake", "-n", "--cores", "1", "--configfile", f"workflow/configs/{name}.yaml"], workspace)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    layers = CONFIGS[name]
    assert counts["sae_import"] == counts["features"] == str(layers) and "sae" not in counts  # imported, not trained
    assert counts["fig3"] == counts["fig5"] == "1"
    assert "demo_backbone" not in counts


def test_a_run_without_the_sae_files_stops_before_any_job_saying_how_to_fetch_them(workspace):
    result = run(
        ["snakemake", "--cores", "1", "--configfile", "workflow/configs/saev-clip-vit-b16.yaml"], workspace, check=False
    )
    assert result.returncode != 0
    assert "layer 11: data/saes/saev-clip-vit-b16/sae.pt" in result.stderr
    assert "wget -P data/saes/saev-clip-vit-b16 https://huggingface.co/osunlp/" in result.stderr
    assert not (workspace / "results" / "data").exists()  # not even the manifest ran


@pytest.mark.parametrize("name", list(CONFIGS))
def test_released_sae_config_names_a_path_per_layer_and_only_differences(name):
    values = config(name)
    source = SAESource(**values["sae"]["source"])
    assert all(source.path_for(layer).startswith("data/saes/") for layer in values["layers"])  # tracked by DVC
    assert values["data"]["n_train"] == 0 and restated_defaults(values, defaults()) == []
    resolve(merge(yaml.safe_load((REPO / "params.yaml").read_text()), values))
