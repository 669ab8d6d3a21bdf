"""Ground truth: maps on the planted causes score 1 and hit, maps on the background score 0, bad inputs say why."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from cafe.demo import DemoConfig, write_demo
from cafe.errors import CafeError
from cafe.ground_truth import register
from cafe.ground_truth.causes import object_patches

GRID, PATCH = 8, 8
# feature -> the classes of its three top images (three scenes per class in a 24-image world)
TOPS = {0: ["pills_and_frown"] * 3, 1: ["star", "checker", "balloons"], 2: ["pills", "pills_and_frown", "pills"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo(DemoConfig(n_images=24, seed=0), out)
    objects = pd.read_csv(out / "objects.csv")
    manifest = objects.drop_duplicates("path")[["path", "class"]].reset_index(drop=True)
    manifest.insert(0, "split", "analysis")
    manifest.insert(0, "index", np.arange(len(manifest)))
    manifest.to_csv(out / "manifest.csv", index=False)
    return out


def _patch_share(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """Share of each patch's pixels that belong to the given objects."""
    inside = np.isin(labels, ids).astype(float)
    return inside.reshape(GRID, PATCH, GRID, PATCH).mean(axis=(1, 3))


def _maps(world: Path, images: np.ndarray, cause_kinds: dict[int, set[str]]) -> dict[str, np.ndarray]:
    """Hand-made maps per target: `on_cause` (mostly-causal patches), `on_background` (object-free patches)."""
    objects, manifest = pd.read_csv(world / "objects.csv"), pd.read_csv(world / "manifest.csv")
    with h5py.File(world / "masks.h5") as h5:
        paths, labels = list(h5["path"].asstr()[:]), h5["labels"][:]
    on_cause, on_background = np.zeros(images.shape + (GRID, GRID)), np.zeros(images.shape + (GRID, GRID))
    for (n, j), index in np.ndenumerate(images):
        path = manifest.at[index, "path"]
        rows = objects[(objects["path"] == path) & objects["causal"] & objects["kind"].isin(cause_kinds.get(n, ()))]
        label_map = labels[paths.index(path)]
        best = np.zeros((GRID, GRID), bool)
        for obj in rows["object"]:
            share = _patch_share(label_map, [obj])
            best.flat[share.argmax()] = True
        on_cause[n, j] = (_patch_share(label_map, list(rows["object"])) >= 0.5) | best
        on_background[n, j] = _patch_share(label_map, list(objects.loc[objects["path"] == path, "object"])) == 0
    return {"on_cause": on_cause, "on_background": on_background}


@pytest.fixture(scope="module")
def layer_files(world: Path) -> Path:
    """A features file for layer 2 with the targets of TOPS, and two ERF methods' maps."""
    manifest = pd.read_csv(world / "manifest.csv")
    images = np.array(
        [[manifest.index[manifest["class"] == c][k] for k, c in enumerate(classes)] for classes in TOPS.values()]
    )
    root = world / "results"
    root.mkdir()
    with h5py.File(root / "features.h5", "w") as h5:
        h5["feature"] = np.array(list(TOPS))
        h5["image"], h5["token"] = images, np.ones_like(images)
        h5["value"], h5["max_value"] = np.ones(images.shape, np.float32), np.ones(len(TOPS), np.float32)
        h5["cls_only"] = np.zeros(len(TOPS), bool)
        h5["act_map"] = np.random.default_rng(0).random(images.shape + (1 + GRID * GRID,), dtype=np.float32)
        h5.attrs.update(layer=2, grid=GRID, sae_fingerprint="test")
    for method, maps in _maps(world, images, {0: {"pills", "frown_face"}, 2: {"pills"}}).items():
        write_erf(root / "erf" / "layer2", method, maps)
    return root


def write_erf(folder: Path, method: str, maps: np.ndarray, layer: int = 2) -> None:
    """An ERF file as `cafe erf` writes it: the maps, tagged with their method and layer."""
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{method}.h5", "w") as h5:
        h5["maps"] = maps.astype(np.float32)
        h5.attrs.update(method=method, layer=layer)


def _run(world: Path, root: Path, **override: str) -> Path:
    out = root / "out"
    argv = {
        "--layers": "2",
        "--features": str(root / "features.h5"),
        "--erf-dir": str(root / "erf"),
        "--methods": "on_cause on_background",
        "--manifest": str(world / "manifest.csv"),
        "--objects": str(world / "objects.csv"),
        "--masks": str(world / "masks.h5"),
        "--out-targets": str(out / "layer2.csv"),
        "--out-table": str(out / "table.csv"),
        "--out-figure": str(out / "gt.png"),
        "--metrics": str(out / "gt.json"),
        **override,
    }
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["ground-truth"] + [w for k, v in argv.items() for w in (k, *v.split())])
    args.func(args)
    return out


def test_map_on_the_cause_scores_one_and_map_on_background_zero(world: Path, layer_files: Path) -> None:
    out = _run(world, layer_files)
    scores = pd.read_csv(out / "layer2.csv")
    assert set(scores["feature"]) == {0, 2}, "feature 1 (three unrelated classes) has no known cause"
    assert set(scores.loc[scores["feature"] == 0, "cause"]) == {"frown_face+pills"}
    assert set(scores.loc[scores["feature"] == 2, "cause"]) == {"pills"}
    good, bad = scores[scores["method"] == "on_cause"], scores[scores["method"] == "on_background"]
    assert np.allclose(good["mass_in"], 1) and (good["hit"] == 1).all()
    assert np.allclose(bad["mass_in"], 0) and (bad["hit"] == 0).all()
    both = good[good["feature"] == 0]
    assert (both["parts"] == 2).all() and (both["weakest_part"] > 0).all()
    assert good.loc[good["feature"] == 2, "weakest_part"].isna().all()


def test_table_figure_and_metrics_cover_methods_activation_and_chance(world: Path, layer_files: Path) -> None:
    out = _run(world, layer_files)
    table = pd.read_csv(out / "table.csv")
    assert set(table["method"]) == {"on_cause", "on_background", "activation", "chance"}
    assert (table["layer"] == 2).all() and (table["targets"] == 6).all()
    chance = table.set_index("method").at["chance", "mass_in"]
    assert 0 < chance < 0.5
    metrics = json.loads((out / "gt.json").read_text())
    assert metrics["layer2"]["on_cause"]["mass_in"] == 1.0
    assert (out / "gt.png").stat().st_size > 10_000


def test_patch_counts_as_object_from_a_quarter_of_its_pixels() -> None:
    labels = np.zeros((16, 16), np.uint8)
    labels[0:4, 0:4] = 1  # 16 of 64 pixels of patch (0, 0): a quarter
    labels[8:10, 8:16] = 1  # 16 pixels of patch (1, 1), the same share
    labels[0:2, 8:10] = 2  # a tiny object still keeps its best patch
    masks = object_patches(labels, grid=2, overlap=0.25)
    assert masks[1].tolist() == [[True, False], [False, True]]
    assert masks[2].tolist() == [[False, True], [False, False]]
    assert object_patches(labels, grid=2, overlap=0.5)[1].sum() == 1


def test_missing_masks_file_is_named(world: Path, layer_files: Path) -> None:
    with pytest.raises(CafeError, match="nowhere.h5: file not found"):
        _run(world, layer_files, **{"--masks": str(world / "nowhere.h5")})


def test_manifest_from_another_folder_is_refused(world: Path, layer_files: Path, tmp_path: Path) -> None:
    manifest = pd.read_csv(world / "manifest.csv")
    manifest["path"] = "n01440764/" + manifest["path"].str.split("/").str[1]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(CafeError, match=r"manifest image 0 \('n01440764/.*not in the demo masks"):
        _run(world, layer_files, **{"--manifest": str(tmp_path / "manifest.csv")})


@pytest.mark.parametrize(
    "shape, layer, message",
    [
        ((3, 3, 4, 4), 2, r"on_cause.h5: maps have shape \(3, 3, 4, 4\)"),
        ((3, 4, 4, 4), 3, r"on_cause.h5: ERF maps of layer 3, but .*features.h5 is layer 2"),
    ],
)
def test_erf_maps_of_the_wrong_shape_or_layer_name_the_file(
    world: Path, layer_files: Path, tmp_path: Path, shape: tuple, layer: int, message: str
) -> None:
    for method in ("on_cause", "on_background"):
        write_erf(tmp_path / "layer2", method, np.zeros(shape), layer)
    with pytest.raises(CafeError, match=message):
        _run(world, layer_files, **{"--erf-dir": str(tmp_path)})


def test_objects_and_masks_from_different_runs_are_refused(world: Path, layer_files: Path, tmp_path: Path) -> None:
    write_demo(DemoConfig(n_images=8, seed=0), tmp_path)
    with pytest.raises(CafeError, match="different `cafe demo-data` runs"):
        _run(world, layer_files, **{"--masks": str(tmp_path / "masks.h5")})
