"""The SAE tools' own packages, for tests/test_sae_formats.py: each installed once (cached) from PyPI with
`pip install --no-deps --target`, beside but not into the test venv (their pins clash with cafe's: all but
overcomplete pull transformers 5), and run in a subprocess by tests/sae_tools_run.py, which writes checkpoints
with the tool's own save routine and z with the tool's own encode.

A tool's package is imported as published; the third-party modules its import chain names but its SAE classes
never call (datasets, wandb, plotly, nnsight...) are empty stand-ins there (RUNNER's STANDINS), and overcomplete's
package `__init__`s are skipped (they import matplotlib's removed `cm.get_cmap`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

RUNNER = Path(__file__).with_name("sae_tools_run.py")
COMMON = ("einops==0.8.2",)
TOOLS: dict[str, tuple[str, ...]] = {  # tool -> pinned wheels (pure Python, installed without dependencies)
    "saelens": (
        "sae-lens==6.54.12",
        "transformer-lens==3.9.0",
        "better-abc==0.0.3",
        "jaxtyping==0.3.11",
        "wadler-lindig==0.1.8",
        "fancy-einsum==0.0.3",
        "typeguard==4.4.4",
        "beartype==0.23.1",
        "simple-parsing==0.1.9",
        "docstring-parser==0.18.0",
    ),
    "saev": ("saev==0.1.0", "beartype==0.23.1", "jaxtyping==0.3.11", "wadler-lindig==0.1.8"),
    "dictionary_learning": ("dictionary-learning==0.1.0",),
    "sparsify": (
        "eai-sparsify==1.3.3",
        "simple-parsing==0.1.9",
        "docstring-parser==0.18.0",
        "natsort==8.4.0",
        "accelerate==1.16.0",
    ),
    "overcomplete": ("overcomplete==0.3.0",),
}


def cache_root() -> Path:
    """Where the tools are installed: $CAFE_SAE_TOOLS, else ~/.cache/cafe/sae-tools."""
    return Path(os.environ.get("CAFE_SAE_TOOLS") or Path.home() / ".cache" / "cafe" / "sae-tools")


def tool_dir(tool: str) -> Path:
    """The tool's packages, installed once per pin set (atomically: a cut-off install is never used)."""
    pins = (*TOOLS[tool], *COMMON)
    target = cache_root() / f"{tool}-{hashlib.sha256(' '.join(pins).encode()).hexdigest()[:10]}"
    if not target.is_dir():
        partial = target.with_name(target.name + f".partial{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(partial), *pins]
        subprocess.run(command, check=True, capture_output=True, timeout=600)
        partial.rename(target)
    return target


def activations(seed: int = 0, n: int = 64, width: int = 32) -> np.ndarray:
    """Seeded activations, neither centred nor unit-scaled. The default is what every tool encodes: 64 tokens of the
    tiny demo tower's width (32), so that the import test (tests/test_sae_import_e2e.py) can take its SAELens SAE
    from the same run as the formats test."""
    return (np.random.default_rng(seed).standard_normal((n, width)) * 2 + 0.5).astype(np.float32)


def run_on_sample(tool: str, workdir: Path) -> dict[str, dict]:
    """`run_tool` on `activations()` written to workdir/acts.npy."""
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(workdir / "acts.npy", activations())
    return run_tool(tool, workdir)


def run_tool(tool: str, workdir: Path) -> dict[str, dict]:
    """Run the tool's builders in RUNNER on workdir/acts.npy: each case's checkpoint and z.npy under
    workdir/<case>/; returns {case: {"format", "options"}}."""
    env = {**os.environ, "PYTHONPATH": str(tool_dir(tool))}
    done = subprocess.run(
        [sys.executable, str(RUNNER), tool, str(workdir)], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tool}'s own package failed:\n{done.stderr[-4000:]}")
    return json.loads((workdir / "cases.json").read_text())
