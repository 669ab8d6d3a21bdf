"""End to end on another family: the tiny DAG (one layer, four features, AttnLRP, one canvas) on a timm
DINOv2-with-registers tower with random weights, so that every step reads the token layout from its inputs
(CLS, 4 registers, a 4x4 patch grid) and no register is ever a feature's token."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pandas as pd
import pytest
from workflow_utils import TINY_PARAMS, make_workspace, run

from cafe.tokens import TokenLayout

pytestmark = pytest.mark.e2e

LAYER = 2
PARAMS = copy.deepcopy(TINY_PARAMS)
PARAMS["backbone"] = {"family": "timm", "model": "vit_cafe_tiny_patch8_reg4_dinov2", "pretrained": None, "seed": 0}
PARAMS["layers"] = [LAYER]
PARAMS["erf"]["methods"] = ["attnlrp"]
PARAMS["insertion"] |= {"canvases": ["mean"], "seeds": 1}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = make_workspace(tmp_path_factory.mktemp("timm"), PARAMS)
    run(["snakemake", "--cores", "2"], root)
    return root


def test_every_step_runs_on_a_timm_dinov2_tower_with_registers(study):
    with h5py.File(study / f"results/activations/layer{LAYER}.h5") as h5:
        layout = TokenLayout.from_attrs(dict(h5.attrs))
        assert layout == TokenLayout(4, has_cls=True, n_registers=4)
        assert h5.attrs["backbone"] == "vit_cafe_tiny_patch8_reg4_dinov2" and h5.attrs["patch_size"] == 8
        assert not np.isin(h5["train_token"][:], list(layout.registers)).any()
    with h5py.File(study / f"results/features/layer{LAYER}.h5") as h5:
        assert TokenLayout.from_attrs(dict(h5.attrs)) == layout
        tokens = h5["token"][:][h5["image"][:] >= 0]
        assert len(tokens) and not np.isin(tokens, list(layout.registers)).any()
    with h5py.File(study / f"results/erf/layer{LAYER}/attnlrp.h5") as h5:
        assert h5["maps"].shape[-2:] == (4, 4)
    auc = pd.read_csv(study / "results/tables/insertion_auc.csv")
    assert {"attnlrp", "activation", "random"} <= set(auc["method"])
    for product in ("results/figures/fig3_insertion.png", f"results/annotation/sheets/layer{LAYER}.csv"):
        assert (study / product).is_file(), product
