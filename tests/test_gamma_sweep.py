"""benchmarks/gamma_sweep.py (its AUCs are quoted in the README) runs on a finished demo as written, with a
params.yaml whose `erf:` section is empty as the shipped one's is (the defaults), and at gamma 0 (the epsilon rule,
the default) it reproduces the DAG's own AttnLRP insertion AUCs: the sweep measures what the pipeline measures."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_utils import REPO, copy_workspace, run

pytestmark = pytest.mark.e2e


def test_gamma_zero_reproduces_the_dags_attnlrp_aucs(finished_tiny_demo: Path, tmp_path: Path) -> None:
    demo = copy_workspace(finished_tiny_demo, tmp_path / "demo")
    params = yaml.safe_load((demo / "params.yaml").read_text())
    (demo / "params.yaml").write_text(yaml.safe_dump({**params, "erf": {}}))  # the tiny demo's AttnLRP = defaults
    out = tmp_path / "sweep.csv"
    run([sys.executable, str(REPO / "benchmarks/gamma_sweep.py"), "--gammas", "0", "--out", str(out)], demo)
    sweep = pd.read_csv(out)
    dag = pd.read_csv(demo / "results/tables/insertion_auc.csv").query("method == 'attnlrp'")
    keys = ["layer", "canvas", "kind"]
    both = dag.merge(sweep, on=keys, suffixes=("_dag", "_sweep"))
    assert len(both) == len(dag) > 0 and set(sweep["gamma"]) == {0.0}
    assert (both["auc_mean_dag"] - both["auc_mean_sweep"]).abs().max() < 1e-6, both
