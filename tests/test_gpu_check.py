"""The prepared GPU check in its CPU dry mode (tiny tower): every part is written, and `cafe bench --budget` turns
the file into the budget table per precision. No rate is asserted, only that each was measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cafe.cli import main

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("attnlrp", "ig", "kernelshap", "gradient")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "gpu-dry.json"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_the_dry_check_writes_every_fidelity_gate_against_fp32(dry_run: Path):
    results = json.loads(dry_run.read_text())
    assert results["dry"] and results["machine"]["admission"]["bound_cores"] > 0
    fidelity = results["fidelity"]
    assert set(fidelity["modes"]) == {"fp32", "bf16"}  # tf32 only where CUDA is
    assert set(fidelity["modes"]["bf16"]["maps"]) == set(METHODS)
    assert {"activations", "erf", "insertion", "sae"} <= set(fidelity["verdicts"]["bf16"])
    assert set(fidelity["insertion_auc"]["bf16"]) == {*METHODS, "random"}


def test_the_dry_check_measures_every_rate_per_precision(dry_run: Path):
    results = json.loads(dry_run.read_text())
    for mode in ("fp32", "bf16"):
        (model,) = results["precisions"][mode]["models"].values()
        stages = model["stages"]
        wanted = {"extraction.feed.cpu", "extraction.feed.device", "extraction.forward", "insertion"}
        assert wanted | {f"erf.{m}" for m in METHODS} <= set(stages), (mode, sorted(stages))
        feeds = {r["params"]["feed"] for name, r in stages.items() if name.startswith("sae.train")}
        assert feeds == {"stream", "resident"}
        assert all(r["throughput"] > 0 and r["void"] for r in stages.values())  # --allow-busy on a busy test box


def test_budget_prints_one_table_per_precision_from_the_file(dry_run: Path, capsys):
    assert main(["bench", "--budget", str(dry_run)]) == 0
    text = capsys.readouterr().out
    assert text.count("| step | measured rate | paper setting | hours |") == 2
    assert "#### fp32" in text and "#### bf16" in text
    for step in ("extraction", "SAE training", "ERF", "insertion", "total"):
        assert f"| {step} |" in text


def test_budget_refuses_a_file_without_the_records(tmp_path: Path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": {"ViT-L-14": {"stages": {}}}}))
    assert main(["bench", "--budget", str(bad)]) == 2
    assert "the results have no 'extraction' record for ViT-L-14" in capsys.readouterr().err
