"""Helpers for tests that run the real Snakemake / DVC workflow in a scratch copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "dvc.yaml", "params.yaml", "workflow", "profiles", ".gitignore", ".dvcignore", "cafe")

# The smallest demo that still exercises every rule: 2 layers of a 3-block 32px tower, all four ERF methods.
TINY_PARAMS: dict[str, Any] = {
    "demo": {
        "enabled": True,
        "n_images": 96,
        "image_size": 32,
        "seed": 0,
        "backbone": {"epochs": 1, "batch_size": 32, "lr": 0.002, "weight_decay": 0.05, "holdout": 0.25, "seed": 0},
    },
    "data": {"images": "results/demo/images", "n_train": 48, "n_analysis": 24, "seed": 0},
    # device auto, as users run it: the CPU on a machine without GPUs, the scheduler's GPU in the SLURM test
    "backbone": {"model": "cafe-tiny-vit", "pretrained": "results/backbone/demo.pt", "seed": 0, "device": "auto"},
    "layers": [1, 3],
    "activations": {"batch_size": 32, "tokens_per_image": None},
    "sae": {
        "expansion": 2,
        "groups": [0.25, 1.0],
        "activation": "relu",
        "l1": 0.0004,
        "k": 4,
        "lr": 0.001,
        "steps": 40,
        "batch_size": 64,
        "checkpoint_every": 20,
        "seed": 0,
    },
    "features": {"n_features": 4, "top_k": 2},
    "erf": {
        "methods": ["attnlrp", "ig", "kernelshap", "gradient"],
        "batch_size": 4,
        "attnlrp": {"epsilon": 1e-6, "gamma": 0.0},
        "ig": {"steps": 4},
        "kernelshap": {"samples": 16},
        "gradient": {"times_input": True},
    },
    "insertion": {
        "canvases": ["mean", "blur"],
        "steps": 4,
        "seeds": 2,
        "min_activation": 0.0,
        "greedy_targets": 1,
        "bootstrap": 50,
    },
    "annotation": {"n_features": 4, "gallery_k": 2, "threshold": 0.5},
    "ground_truth": {"patch_overlap": 0.25, "kind_purity": 0.8},
    "compute": {},  # defaults (fp32); present because DVC tracks the section
}


def env() -> dict[str, str]:
    """The test's own interpreter's bin first on PATH, so rules find `cafe`, `snakemake` and `dvc`."""
    out = dict(os.environ)
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out["PYTHONUNBUFFERED"] = "1"
    for who in ("AUTHOR", "COMMITTER"):  # tests commit (git, dvc exp); CI machines may have no git identity
        out.setdefault(f"GIT_{who}_NAME", "cafe tests")
        out.setdefault(f"GIT_{who}_EMAIL", "tests@cafe.invalid")
    return out


def make_workspace(root: Path, params: dict[str, Any] | None = None, dvc: bool = False) -> Path:
    """Copy the workflow into `root`, write `params`, and (optionally) make it a git + DVC repository."""
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    (root / "data" / "annotations").mkdir(parents=True)
    (root / "data" / "annotations" / ".gitkeep").touch()  # as in the repo: git keeps the (DVC-tracked) folder
    (root / "data" / "saes").mkdir()  # imported SAEs (a DVC dependency of the sae stage), with its README as in git
    shutil.copy2(REPO / "data" / "saes" / "README.md", root / "data" / "saes" / "README.md")
    if params is not None:
        write_params(root, params)
    if dvc:
        run(["git", "init", "-q"], root)
        run(["dvc", "init", "-q"], root)
        shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")  # the repo's settings (cache link type)
        shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # the repo's plot templates, as a clone has
    return root


def write_params(root: Path, params: dict[str, Any]) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(
    cmd: list[str], cwd: Path, check: bool = True, timeout: int = 3000, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command in the workspace; on failure show its output (and the logs of failed rules)."""
    result = subprocess.run(
        cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((cwd / "results" / "logs").rglob("*.log")))
        raise AssertionError(
            f"{cmd} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}\n{logs}"
        )
    return result


def copy_workspace(source: Path, target: Path) -> Path:
    """A copy of a finished workspace (results, .snakemake metadata, git and DVC state; files and their mtimes
    kept), so slow tests can share one tiny-demo run and each change its own copy."""
    shutil.copytree(source, target, symlinks=True, copy_function=shutil.copy2)
    return target


def mtimes(root: Path, pattern: str) -> dict[str, int]:
    """Modification times (ns) of files matching a glob under root."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.glob(pattern)) if p.is_file()}
