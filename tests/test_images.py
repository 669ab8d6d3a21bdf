"""The ImageFolder reader, the seeded manifest and image loading."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from cafe.errors import CafeError
from cafe.images import image_batches, list_images, load_images
from cafe.io.manifest import read_manifest
from cafe.manifest import DataConfig, make_manifest, register


def run_cli(argv: list[str]) -> None:
    """Parse and run one `cafe manifest` command line through the module's own subparser."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    args.func(args)


def test_manifest_is_deterministic_with_disjoint_splits(image_folder: Path, tmp_path: Path) -> None:
    params = json.dumps({"images": str(image_folder), "n_train": 9, "n_analysis": 4, "seed": 3})
    run_cli(["manifest", "--params", params, "--out", str(tmp_path / "a.csv")])
    run_cli(["manifest", "--params", params, "--out", str(tmp_path / "b.csv")])
    first = read_manifest(tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert list(first.columns) == ["index", "split", "path", "class"]
    assert first["index"].tolist() == list(range(13))
    assert first["split"].value_counts().to_dict() == {"train": 9, "analysis": 4}
    assert first["path"].is_unique
    assert all((image_folder / p).is_file() and p.split("/")[0] == c for p, c in zip(first["path"], first["class"]))


def test_manifest_seed_changes_the_draw(image_folder: Path) -> None:
    draws = [make_manifest(DataConfig(str(image_folder), 5, 3, seed))["path"].tolist() for seed in (0, 1)]
    assert draws[0] != draws[1]


def test_reader_finds_common_extensions_and_any_class_names(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "r", {"dog": 2}, ext=".JPEG")
    make_image_folder(root, {"Cat 7": 1}, ext=".jpg")
    make_image_folder(root, {"n0001": 1}, ext=".png")
    (root / "dog" / "notes.txt").write_text("not an image")
    images = list_images(root)
    assert images["class"].tolist() == ["Cat 7", "dog", "dog", "n0001"]
    assert images["path"].iloc[0] == "Cat 7/Cat 7_000.jpg"


@pytest.mark.parametrize(
    "layout, message",
    [
        (None, "not found"),
        ({}, "no class folders"),
        ({"empty_class": 0}, "no images"),
    ],
)
def test_bad_image_folders_are_named(tmp_path: Path, layout: dict | None, message: str) -> None:
    root = tmp_path / "images"
    if layout is not None:
        root.mkdir()
        make_image_folder(root, layout)
    with pytest.raises(CafeError, match=message) as err:
        make_manifest(DataConfig(str(root), 1, 1))
    assert str(root) in str(err.value)


def test_asking_for_more_images_than_exist_says_how_many_exist(image_folder: Path) -> None:
    with pytest.raises(CafeError, match="holds only 16 images"):
        make_manifest(DataConfig(str(image_folder), 12, 5))


def test_load_images_resizes_shorter_side_and_center_crops(tmp_path: Path) -> None:
    left_red = Image.new("RGB", (48, 24), (0, 0, 255))
    left_red.paste((255, 0, 0), (0, 0, 12, 24))  # only the left quarter is red: cropped away by a center crop
    left_red.save(tmp_path / "wide.png")
    Image.new("L", (20, 20), 128).save(tmp_path / "gray.png")
    batch = load_images(tmp_path, ["wide.png", "gray.png"], 16)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32
    assert batch.min() >= 0 and batch.max() <= 1
    assert batch[0, 0].max() < 0.1 and batch[0, 2].min() > 0.9  # blue only: the crop kept the center
    assert torch.allclose(batch[1], torch.full((3, 16, 16), 128 / 255), atol=0.02)  # grayscale became RGB


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images", {"a": 2})
    broken = root / "a" / "a_001.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(CafeError, match="a_001.png"):
        load_images(root, ["a/a_000.png", "a/a_001.png"], 32)


@pytest.mark.parametrize("workers", [0, 2])
def test_image_batches_follow_the_split_in_manifest_order(image_folder: Path, workers: int) -> None:
    manifest = make_manifest(DataConfig(str(image_folder), 5, 3))
    rows = manifest[manifest["split"] == "analysis"]
    batches = list(image_batches(image_folder, rows, 32, batch_size=2, num_workers=workers))
    assert [len(i) for i, _ in batches] == [2, 1]
    assert torch.cat([i for i, _ in batches]).tolist() == rows["index"].tolist()
    assert torch.equal(batches[0][1], load_images(image_folder, rows["path"].tolist()[:2], 32))


def test_manifest_missing_columns_is_an_error(tmp_path: Path) -> None:
    pd.DataFrame({"path": ["a.png"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(CafeError, match="lacks column"):
        read_manifest(tmp_path / "m.csv")
