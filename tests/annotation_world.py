"""A tiny synthetic layer for the annotation tests (features whose ERF sits on or far from their activation),
with fixtures and helpers that play the person: start a human file, type answers, run Fig 5."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import make_image_folder

from cafe.annotation.config import AnnotationConfig
from cafe.annotation.fig5 import make_fig5
from cafe.annotation.ingest import annotate_init
from cafe.annotation.sheets import make_sheets
from cafe.images import list_images
from cafe.io import write_csv

GRID, TOP_K, N_FEATURES, LAYER = 4, 3, 8, 3
CROP = [32, 32]  # the model's eval crop (input size, resize): a plain square center crop, as the demo tower's
NON_LOCAL = (1, 4, 6)  # feature 6 fires only at CLS
CLS_FEATURE = 6
CONFIG = AnnotationConfig(n_features=N_FEATURES, gallery_k=TOP_K, threshold=0.5)


def write_manifest(images: Path, path: Path) -> int:
    """A manifest of every image under `images` (all in the analysis split); returns the number of images."""
    manifest = list_images(images).assign(split="analysis")
    manifest.insert(0, "index", np.arange(len(manifest)))
    write_csv(path, manifest[["index", "split", "path", "class"]])
    return len(manifest)


def write_layer(results: Path, n_images: int, fingerprint: str = "sae000000001") -> tuple[Path, Path]:
    """Features + attnlrp ERF files of one layer: local features have ERF = activation, non-local ones far away."""
    rng = np.random.default_rng(0)
    tokens = 1 + GRID * GRID
    image = (np.arange(N_FEATURES * TOP_K).reshape(N_FEATURES, TOP_K) * 5) % n_images
    token = np.zeros((N_FEATURES, TOP_K), int)
    act_map = np.zeros((N_FEATURES, TOP_K, tokens), np.float32)
    erf = np.zeros((N_FEATURES, TOP_K, GRID, GRID), np.float32)
    for n in range(N_FEATURES):
        for k in range(TOP_K):
            row, col = rng.integers(0, 2, size=2)
            far = (row + 2, col + 2) if n in NON_LOCAL else (row, col)
            token[n, k] = 0 if n == CLS_FEATURE else 1 + row * GRID + col
            act_map[n, k, token[n, k]] = 1.0 + n
            erf[n, k][far] = 1.0
            erf[n, k] += rng.uniform(0, 0.01, (GRID, GRID))
    image[-1, -1], erf[-1, -1] = -1, np.nan  # a feature with one target fewer
    features, erf_path = results / f"features/layer{LAYER}.h5", results / f"erf/layer{LAYER}/attnlrp.h5"
    features.parent.mkdir(parents=True, exist_ok=True)
    erf_path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(features, "w") as f:
        f["feature"] = np.arange(N_FEATURES)
        f["image"], f["token"], f["act_map"] = image, token, act_map
        f["value"] = act_map.max(axis=-1)
        f["max_value"] = act_map.max(axis=(1, 2))
        f["cls_only"] = np.arange(N_FEATURES) == CLS_FEATURE
        f.attrs.update(layer=LAYER, grid=GRID, n_tokens=tokens, sae_fingerprint=fingerprint)
    with h5py.File(erf_path, "w") as e:
        e["maps"] = erf
        e.attrs.update(method="attnlrp", layer=LAYER, crop=json.dumps(CROP))
    return features, erf_path


def sheets(results: Path, images: Path, annotations: Path | None = None) -> Path:
    """Run the sheets step on the synthetic layer; returns the sheet path."""
    out = results / "annotation"
    make_sheets(
        LAYER,
        results / f"features/layer{LAYER}.h5",
        results / f"erf/layer{LAYER}/attnlrp.h5",
        results / "data/manifest.csv",
        images,
        CONFIG,
        out / f"sheets/layer{LAYER}.csv",
        out / f"galleries/layer{LAYER}",
        out / f"index/layer{LAYER}.html",
        annotations,
    )
    return out / f"sheets/layer{LAYER}.csv"


def build_world(root: Path, images: Path, fingerprint: str = "sae000000001") -> Path:
    """Manifest, layer files and sheets under `root/results`; returns the sheet path."""
    results = root / "results"
    n_images = write_manifest(images, results / "data/manifest.csv")
    write_layer(results, n_images, fingerprint)
    return sheets(results, images)


def tree_hashes(root: Path) -> dict[str, str]:
    """Content hash of every file under `root` (to prove a failed run changed nothing)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images, manifest, one layer's features + ERF, and its generated sheets (made once, copied per test)."""
    root = tmp_path_factory.mktemp("world")
    build_world(root, make_image_folder(root / "images", {"n01440764": 6, "n01443537": 5, "n01484850": 5}))
    return root


@pytest.fixture()
def project(world: Path, tmp_path: Path) -> Path:
    """A private copy of the world, with an empty data/annotations/."""
    shutil.copytree(world, tmp_path, dirs_exist_ok=True)
    (tmp_path / "data/annotations").mkdir(parents=True)
    return tmp_path


def fig5(project: Path) -> pd.DataFrame:
    """Run the Fig 5 step on the project's sheet and human files; returns the counts table."""
    out = project / "results"
    return make_fig5(
        [out / f"annotation/sheets/layer{LAYER}.csv"],
        project / "data/annotations",
        CONFIG,
        out / "figures/fig5_nonlocal.png",
        out / "tables/fig5_nonlocal.csv",
        out / "metrics/annotation.json",
    )


def annotate(project: Path, answers: dict[int, str], annotator: str | None = None) -> Path:
    """What a person does: start the file from the sheet and type answers into the non_local column."""
    path = annotate_init(LAYER, project / "results/annotation/sheets", project / "data/annotations", annotator)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table["non_local"] = [answers.get(int(feature), "") for feature in table["feature"]]
    table.to_csv(path, index=False)
    return path
