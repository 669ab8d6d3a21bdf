"""Shared fixtures: a tiny random OpenCLIP tower, a tiny SAE on it, a tiny ImageFolder on disk, the one finished
tiny demo (built once for all of pytest-xdist's workers); and three hooks: a skip fails under CI=true
(skips_fail_in_ci.py), $CAFE_TEST_TIMING records where the time goes (timing_record.py), the suite splits over
the workers in units (worker_units.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import sae_tools
import skips_fail_in_ci
import timing_record
import torch
import worker_units
from PIL import Image

from cafe.backbone import Backbone, BackboneConfig
from cafe.sae import MatryoshkaSAE

# On two pytest-xdist workers sharing two cores, one thread each: two threads per worker doubled the CPU time of
# the in-process torch tests (spinning threads fight for the cores); in one process, two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def pytest_configure(config: pytest.Config) -> None:
    """The hook modules as plugins of the whole session: a conftest's own hooks miss session fixtures."""
    for plugin in (skips_fail_in_ci, timing_record, worker_units):
        if not config.pluginmanager.is_registered(plugin):
            config.pluginmanager.register(plugin, f"cafe-{plugin.__name__}")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices are overhead-bound: one thread is faster, and far faster on a busy shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def finished_tiny_demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny demo run as the README says (`snakemake --cores all`, then `dvc commit`: a git + DVC repository,
    every product made and committed), built once per session: under pytest-xdist by the first worker that needs
    it while the others wait for it. Never change it: take `workflow_utils.copy_workspace(finished_tiny_demo,
    tmp_path / ...)`; every worker checks at its end that nothing in it changed."""
    root = built_once_per_session(request, tmp_path_factory, "finished", build_tiny_demo)
    before = fingerprint(root)
    yield root
    assert fingerprint(root) == before, f"a test changed the shared tiny demo {root}: copy it instead"


@pytest.fixture(scope="session")
def sae_tool_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[Path, dict[str, dict]]]:
    """`sae_tool_run(tool)`: the folder and cases of one run of that SAE tool's own package (tests/sae_tools.py) on
    `sae_tools.activations()`, made once per session for all workers (SAELens: the formats test and the
    import test read the same run). Read only."""

    def run(tool: str) -> tuple[Path, dict[str, dict]]:
        build = partial(sae_tools.run_on_sample, tool)
        folder = built_once_per_session(request, tmp_path_factory, f"sae-tool-{tool}", build)
        return folder, json.loads((folder / "cases.json").read_text())

    return run


def built_once_per_session(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> Path:
    """The folder `name` made by `build(folder)` once per session: in one process, here; under pytest-xdist, by the
    first worker that asks while the others wait for it (worker_units.built_once)."""
    worker = getattr(request.config, "workerinput", {}).get("workerid")
    if worker is None:  # one process
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    # the folder every worker's own temporary folder is in: one per session
    return worker_units.built_once(tmp_path_factory.getbasetemp().parent / name, build, worker)


def build_tiny_demo(root: Path) -> Path:
    """The tiny demo in `root`, run by plain Snakemake and committed to DVC (the README's way), dvc.lock last."""
    from workflow_utils import TINY_PARAMS, make_workspace, run

    root.mkdir(parents=True, exist_ok=True)
    make_workspace(root, TINY_PARAMS, dvc=True)
    run(["snakemake", "--cores", "all"], root)
    run(["dvc", "commit", "--force"], root)
    run(["git", "add", "dvc.lock"], root)  # staged, as `dvc repro` leaves it (autostage)
    return root


def fingerprint(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under `root`."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_backbone() -> Backbone:
    """cafe-tiny-vit: 32x32 images, 8x8 patches (4x4 grid, 17 tokens), width 32, 3 blocks, random seeded weights."""
    return Backbone.load(BackboneConfig("cafe-tiny-vit", seed=0, device="cpu"))


@pytest.fixture(scope="session")
def tiny_sae(tiny_backbone: Backbone) -> MatryoshkaSAE:
    """An untrained SAE with 64 latents on the tiny tower's width (random directions: about half fire per token)."""
    torch.manual_seed(0)
    sae = MatryoshkaSAE(tiny_backbone.width, 64)
    return sae.eval().requires_grad_(False)


def make_image_folder(root: Path, classes: dict[str, int], size: int = 32, seed: int = 0, ext: str = ".png") -> Path:
    """Write an ImageFolder (<root>/<class>/<i><ext>) of random RGB images; returns root."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i:03d}{ext}")
    return root


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """Three classes of random 32x32 images, ImageNet-style folder names."""
    return make_image_folder(tmp_path / "images", {"n01440764": 6, "n01443537": 5, "n01484850": 5})
