"""Galleries and the labelling page show exactly the region the model saw: its eval crop (a squash, a crop_pct
resize of the shorter side, or the demo's plain square crop) scaled to the display size, so the patch-grid heat lies
over the pixels the model's patches covered."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from annotation_world import LAYER, N_FEATURES, TOP_K, write_layer, write_manifest
from PIL import Image

from cafe.annotation.gallery import DISPLAY_SIZE, load_gallery_images, load_indexed_images
from cafe.annotation.layer_maps import read_layer
from cafe.errors import CafeError
from cafe.images import Crop, load_images
from cafe.io.erf_maps import read_erf_crop

SHAPES = [(300, 200), (200, 300), (257, 411), (480, 270), (224, 224)]  # (height, width): tall, wide, square
MODEL_CROPS = [Crop(224, (224, 224)), Crop(224, 256), Crop(384, (384, 384)), Crop(224, 232), Crop(256, (300, 280))]


def photo_like(path: Path, height: int, width: int, seed: int) -> str:
    """A smooth random RGB image (a low-resolution noise field upsampled), saved losslessly; returns its name."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(32, 224, size=(4, 4, 3), dtype=np.uint8)  # no bicubic overshoot clipped at 0 or 255
    Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC).save(path / f"{seed}.png")
    return f"{seed}.png"


def model_input_at(crop: Crop, root: Path, name: str, size: int) -> np.ndarray:
    """The model's own preprocessed input, resized to `size` (bicubic, antialiased) as uint8 (size, size, 3)."""
    pixels = load_images(root, [name], crop)
    small = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True)
    return (small[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("seed", range(len(SHAPES) * len(MODEL_CROPS)))
def test_the_shown_image_is_the_models_input_rescaled(tmp_path: Path, seed: int) -> None:
    height, width = SHAPES[seed % len(SHAPES)]
    crop = MODEL_CROPS[seed // len(SHAPES)]
    name = photo_like(tmp_path, height, width, seed)
    shown = load_indexed_images([0], tmp_path, {0: name}, crop, DISPLAY_SIZE)[0].astype(int)
    model = model_input_at(crop, tmp_path, name, DISPLAY_SIZE).astype(int)
    assert shown.shape == (DISPLAY_SIZE, DISPLAY_SIZE, 3)
    err = np.abs(shown - model)  # a display resize rounds to whole pixels: a fraction of a pixel off at most
    assert err.mean() <= 1.5 and np.percentile(err, 99) <= 5
    square = (load_images(tmp_path, [name], DISPLAY_SIZE)[0].permute(1, 2, 0).numpy() * 255).round()
    same_region = height == width and not isinstance(crop.resize, int)  # a square squashed: the old square crop
    assert same_region or np.abs(square - model).mean() > err.mean() + 0.5  # the old crop showed another region


@pytest.mark.parametrize("size", [16, 32, 224])
def test_a_plain_square_crop_shows_what_it_showed_before(tmp_path: Path, size: int) -> None:
    """The demo tower's crop (shorter side to the input size, center crop) is the old display crop, bit for bit."""
    names = [photo_like(tmp_path, h, w, i) for i, (h, w) in enumerate(SHAPES)]
    shown = load_indexed_images(list(range(len(names))), tmp_path, dict(enumerate(names)), Crop(size, size))
    before = (load_images(tmp_path, names, DISPLAY_SIZE).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    assert Crop(size, size).scaled(DISPLAY_SIZE) == Crop(DISPLAY_SIZE, DISPLAY_SIZE)
    assert all(np.array_equal(shown[i], before[i]) for i in range(len(names)))


@pytest.mark.parametrize("crop", [[224, [224, 224]], [224, 256]])
def test_a_layer_read_for_the_sheets_and_the_page_shows_the_crop_its_erf_file_records(tmp_path: Path, crop) -> None:
    """The path galleries and the labelling page take: the ERF file's crop -> `read_layer` -> the shown images."""
    images = tmp_path / "images" / "n01440764"
    images.mkdir(parents=True)
    for i in range(7):  # coprime with the world's image stride (5): every image is some feature's target
        photo_like(images, *SHAPES[i % len(SHAPES)], i)
    results = tmp_path / "results"
    n_images = write_manifest(tmp_path / "images", results / "data/manifest.csv")
    features, erf = write_layer(results, n_images)
    with h5py.File(erf, "a") as h5:
        h5.attrs["crop"] = json.dumps(crop)
    targets = read_layer(features, erf, LAYER, N_FEATURES)
    assert targets.crop == Crop(*crop)
    paths = {i: f"n01440764/{i}.png" for i in range(n_images)}
    shown = load_gallery_images(targets, TOP_K, tmp_path / "images", paths)
    assert len(shown) == n_images
    for i, pixels in shown.items():
        model = model_input_at(Crop(*crop), tmp_path / "images", paths[i], DISPLAY_SIZE)
        assert np.abs(pixels.astype(int) - model).mean() <= 1.5


def test_the_erf_file_records_the_crop_and_one_without_it_is_refused(tmp_path: Path) -> None:
    for crop in ([224, [224, 224]], [224, 256]):
        with h5py.File(tmp_path / "erf.h5", "w") as h5:
            h5["maps"] = np.zeros((1, 1, 2, 2))
            h5.attrs["crop"] = json.dumps(crop)
        assert Crop(*read_erf_crop(tmp_path / "erf.h5")) == Crop(*crop)
    with h5py.File(tmp_path / "old.h5", "w") as h5:
        h5["maps"] = np.zeros((1, 1, 2, 2))
    with pytest.raises(CafeError, match="old.h5.*no crop.*erf"):
        read_erf_crop(tmp_path / "old.h5")
