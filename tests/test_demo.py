"""The demo world: seeded, byte-identical scenes whose objects, masks and causes are on record."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cafe.config import parse_section
from cafe.demo import CLASSES, COMPOSITIONAL, DemoConfig, register, write_demo
from cafe.errors import CafeError

N = 48  # six scenes per class


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo(DemoConfig(n_images=N, seed=3), out)
    return out


def test_writes_an_image_folder_with_every_class(world: Path) -> None:
    folders = sorted(p.name for p in (world / "images").iterdir())
    assert folders == sorted(CLASSES)
    image = Image.open(next((world / "images" / "pills_and_frown").iterdir()))
    assert image.size == (64, 64) and image.mode == "RGB"
    assert len(list((world / "images").rglob("*.png"))) == N


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(world: Path, tmp_path: Path) -> None:
    write_demo(DemoConfig(n_images=N, seed=3), tmp_path / "again")
    write_demo(DemoConfig(n_images=N, seed=4), tmp_path / "other")
    assert _digest(tmp_path / "again") == _digest(world)
    other = _digest(tmp_path / "other")
    assert other.keys() == _digest(world).keys() and other != _digest(world)


def test_rerun_replaces_the_image_folder_without_stale_images(tmp_path: Path) -> None:
    write_demo(DemoConfig(n_images=16), tmp_path)
    write_demo(DemoConfig(n_images=8), tmp_path)
    assert len(list((tmp_path / "images").rglob("*.png"))) == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_masks_align_with_objects_and_pixels(world: Path) -> None:
    objects = pd.read_csv(world / "objects.csv")
    with h5py.File(world / "masks.h5") as h5:
        paths, labels = list(h5["path"].asstr()[:]), h5["labels"][:]
    assert sorted(paths) == sorted(objects["path"].unique())
    for path, rows in objects.groupby("path"):
        label_map = labels[paths.index(path)]
        assert sorted(np.unique(label_map[label_map > 0])) == sorted(rows["object"])
        for row in rows.itertuples():
            ys, xs = np.nonzero(label_map == row.object)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (row.x0, row.y0, row.x1, row.y1)
            assert len(ys) == row.area
    pixels = np.asarray(Image.open(world / "images" / paths[0]))
    assert pixels.shape[:2] == labels.shape[1:]


def test_each_scene_holds_exactly_its_class_causes(world: Path) -> None:
    objects = pd.read_csv(world / "objects.csv")
    for path, rows in objects.groupby("path"):
        label = path.split("/")[0]
        assert (rows["class"] == label).all()
        assert sorted(rows.loc[rows["causal"], "kind"]) == sorted(CLASSES[label])
        assert not set(rows.loc[~rows["causal"], "kind"]) & {k for parts in CLASSES.values() for k in parts}


def test_compositional_parts_are_a_patch_apart_and_each_part_alone_is_another_class(world: Path) -> None:
    objects = pd.read_csv(world / "objects.csv")
    assert COMPOSITIONAL and all(len(CLASSES[c]) == 2 for c in COMPOSITIONAL)
    for label in COMPOSITIONAL:
        for part in CLASSES[label]:
            assert [c for c, parts in CLASSES.items() if parts == (part,)], f"{part} alone has no class"
        for _, rows in objects[objects["class"] == label].groupby("path"):
            a, b = rows[rows["causal"]].itertuples()
            gap = max(b.x0 - a.x1, a.x0 - b.x1, b.y0 - a.y1, a.y0 - b.y1)
            assert gap >= 64 // 8


def test_cli_writes_the_world(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["demo-data", "--params", '{"n_images": 8, "image_size": 32, "seed": 1}', "--out", str(tmp_path)]
    )
    args.func(args)
    assert Image.open(next((tmp_path / "images").rglob("*.png"))).size == (32, 32)
    assert (tmp_path / "objects.csv").is_file() and (tmp_path / "masks.h5").is_file()


def test_bad_params_name_the_key() -> None:
    with pytest.raises(CafeError, match="demo.n_images"):
        parse_section(DemoConfig, {"n_images": 0}, "demo")
    with pytest.raises(CafeError, match="demo.colour"):
        parse_section(DemoConfig, {"colour": 1}, "demo")
