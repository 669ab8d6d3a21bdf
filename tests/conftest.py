"""Shared fixtures: a tiny random OpenCLIP tower, a tiny SAE on it, a tiny ImageFolder on disk, the one finished
tiny demo; and two hooks: a skip fails under CI=true (skips_fail_in_ci.py), $CAFE_TEST_TIMING records where the
time goes (timing_record.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skips_fail_in_ci
import timing_record
import torch
from PIL import Image

from cafe.backbone import Backbone, BackboneConfig
from cafe.sae import MatryoshkaSAE

torch.set_num_threads(2)


def pytest_configure(config: pytest.Config) -> None:
    """The two hook modules as plugins of the whole session: a conftest's own hooks miss session fixtures."""
    for plugin in (skips_fail_in_ci, timing_record):
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
def finished_tiny_demo(tmp_path_factory) -> Path:
    """One `dvc repro` of the tiny demo (a git + DVC repository, every product made), shared by the slow tests of
    the whole session. Never change it: take `workflow_utils.copy_workspace(finished_tiny_demo, tmp_path / ...)`."""
    from workflow_utils import TINY_PARAMS, make_workspace, run

    root = make_workspace(tmp_path_factory.mktemp("finished"), TINY_PARAMS, dvc=True)
    run(["dvc", "repro"], root)
    return root


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
