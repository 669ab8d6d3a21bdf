"""Top activations of the first SAE features over the analysis images, against brute force."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from layer_files import write_layer

from cafe import activations, features, manifest, sae
from cafe.activations.config import ActivationsConfig
from cafe.activations.extract import extract
from cafe.backbone import Backbone
from cafe.errors import CafeError
from cafe.features import FeaturesConfig, find_features
from cafe.io import write_csv
from cafe.manifest import DataConfig, make_manifest
from cafe.sae import MatryoshkaSAE, SAEConfig, load_sae, save_checkpoint

DATASETS = {"feature", "image", "analysis_row", "token", "value", "act_map", "max_value", "n_active_images", "cls_only"}


@pytest.fixture()
def tiny_layer(tiny_backbone: Backbone, image_folder: Path, tmp_path: Path) -> Path:
    """Layer-2 activations of the tiny tower: 4 train and 12 analysis images."""
    manifest = tmp_path / "manifest.csv"
    write_csv(manifest, make_manifest(DataConfig(str(image_folder), n_train=4, n_analysis=12)))
    return extract(tiny_backbone, manifest, image_folder, [2], tmp_path / "acts", ActivationsConfig(batch_size=8))[0]


def save_sae(sae: MatryoshkaSAE, path: Path, layer: int, **meta) -> Path:
    save_checkpoint(path, sae, SAEConfig(), {"layer": layer, **meta})
    return path


def test_top_images_match_brute_force(
    tiny_layer: Path, tiny_sae: MatryoshkaSAE, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cafe.features.find.READ_TOKENS", 3 * 17)  # several blocks of 3 images
    sae_path = save_sae(tiny_sae, tmp_path / "sae.pt", 2, backbone="cafe-tiny-vit")
    find_features(tiny_layer, sae_path, tmp_path / "features.h5", FeaturesConfig(n_features=20, top_k=5), "cpu")
    with h5py.File(tiny_layer) as acts:
        h, image_ids = acts["analysis"][:].astype(np.float32), acts["analysis_image"][:]
    z = tiny_sae.encode(torch.from_numpy(h))[..., :20].numpy()  # (12 images, 17 tokens, 20 features)
    with h5py.File(tmp_path / "features.h5") as out:
        got = {name: out[name][:] for name in out}
        attrs = dict(out.attrs)
    assert set(got) == DATASETS
    assert got["act_map"].shape == (20, 5, 17) and got["value"].dtype == np.float32
    np.testing.assert_array_equal(got["feature"], np.arange(20))
    for k in range(20):
        per_image = z[:, :, k].max(1)
        rows = np.argsort(-per_image, kind="stable")[:5]
        np.testing.assert_array_equal(got["analysis_row"][k], rows)
        np.testing.assert_array_equal(got["image"][k], image_ids[rows])
        np.testing.assert_array_equal(got["token"][k], z[rows, :, k].argmax(1))
        np.testing.assert_allclose(got["value"][k], per_image[rows], rtol=1e-5)
        np.testing.assert_allclose(got["act_map"][k], z[rows, :, k], rtol=1e-5, atol=1e-6)
        assert got["n_active_images"][k] == (per_image > 0).sum()
        assert got["max_value"][k] == pytest.approx(per_image.max(), rel=1e-5)
    assert attrs["layer"] == 2 and attrs["grid"] == 4 and attrs["n_tokens"] == 17 and attrs["top_k"] == 5
    assert attrs["sae_fingerprint"] == load_sae(sae_path)[1]["fingerprint"] and attrs["backbone"] == "cafe-tiny-vit"
    assert len(attrs["manifest_hash"]) == 16


def basis_sae() -> MatryoshkaSAE:
    """z_i = relu(h_i) for i < 4: each feature reads one coordinate of the residual."""
    sae = MatryoshkaSAE(4, 8)
    with torch.no_grad():
        sae.W_e.zero_()
        sae.W_e[:4] = torch.eye(4)
    return sae.requires_grad_(False)


def test_sparse_features_pad_with_minus_one_and_flag_cls_only(tmp_path: Path) -> None:
    analysis = np.full((6, 5, 4), -1.0, np.float16)  # 6 images, CLS + 2x2 patches, width 4
    analysis[[1, 4], 0, 0] = [2.0, 3.0]  # feature 0: only ever on CLS
    analysis[2, 3, 1], analysis[5, 1, 1] = 1.5, 0.5  # feature 1: two images, patches 3 and 1
    analysis[:, :, 3] = np.arange(30, dtype=np.float16).reshape(6, 5)  # feature 3: everywhere, peak at the last patch
    path = write_layer(tmp_path / "layer1.h5", np.zeros((8, 4), np.float16), analysis)
    sae_path = save_sae(basis_sae(), tmp_path / "sae.pt", 1)
    find_features(path, sae_path, tmp_path / "f.h5", FeaturesConfig(n_features=4, top_k=3), "cpu")
    with h5py.File(tmp_path / "f.h5") as out:
        got = {name: out[name][:] for name in out}
    assert got["cls_only"].tolist() == [True, False, False, False]
    assert got["n_active_images"].tolist() == [2, 2, 0, 6]
    assert got["analysis_row"].tolist() == [[4, 1, -1], [2, 5, -1], [-1, -1, -1], [5, 4, 3]]
    assert got["image"][1].tolist() == [10, 13, -1]  # write_layer numbers analysis images after the 8 train ones
    assert got["token"].tolist() == [[0, 0, 0], [3, 1, 0], [0, 0, 0], [4, 4, 4]]
    assert got["value"][1].tolist() == [1.5, 0.5, 0.0] and got["max_value"].tolist() == [3.0, 1.5, 0.0, 29.0]
    assert got["act_map"][1, 0].tolist() == [0, 0, 0, 1.5, 0] and not got["act_map"][2].any()


def test_mismatched_sae_or_too_many_features_is_an_error(
    tiny_layer: Path, tiny_sae: MatryoshkaSAE, tmp_path: Path
) -> None:
    other_layer = save_sae(tiny_sae, tmp_path / "l3.pt", 3)
    with pytest.raises(CafeError, match="layer 3"):
        find_features(tiny_layer, other_layer, tmp_path / "f.h5", FeaturesConfig(), "cpu")
    with pytest.raises(CafeError, match="features.n_features = 100 exceeds the SAE's 64"):
        too_many = FeaturesConfig(n_features=100)
        find_features(tiny_layer, save_sae(tiny_sae, tmp_path / "l2.pt", 2), tmp_path / "f.h5", too_many, "cpu")
    with pytest.raises(CafeError, match="width 32, but 4"):
        find_features(
            tiny_layer,
            save_sae(basis_sae(), tmp_path / "narrow.pt", 2),
            tmp_path / "f.h5",
            FeaturesConfig(n_features=4),
            "cpu",
        )
    assert not (tmp_path / "f.h5").exists()


def test_cli_chain_from_image_folder_to_features(image_folder: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for module in (manifest, activations, sae, features):
        module.register(sub)
    backbone = json.dumps({"model": "cafe-tiny-vit", "pretrained": None, "seed": 0, "device": "cpu"})
    commands = [
        [
            "manifest",
            "--params",
            json.dumps({"images": str(image_folder), "n_train": 10, "n_analysis": 6, "seed": 0}),
            "--out",
            f"{tmp_path}/manifest.csv",
        ],
        [
            "activations",
            "--params",
            json.dumps({"batch_size": 4, "tokens_per_image": 8}),
            "--backbone",
            backbone,
            "--manifest",
            f"{tmp_path}/manifest.csv",
            "--images-root",
            str(image_folder),
            "--layers",
            "1",
            "3",
            "--out-dir",
            f"{tmp_path}/acts",
        ],
        [
            "sae",
            "--params",
            json.dumps({"expansion": 2, "steps": 20, "batch_size": 32, "checkpoint_every": 10}),
            "--activations",
            f"{tmp_path}/acts/layer3.h5",
            "--out",
            f"{tmp_path}/sae/layer3.pt",
            "--metrics",
            f"{tmp_path}/sae/layer3.json",
            "--device",
            "cpu",
        ],
        [
            "features",
            "--params",
            json.dumps({"n_features": 8, "top_k": 3}),
            "--activations",
            f"{tmp_path}/acts/layer3.h5",
            "--sae",
            f"{tmp_path}/sae/layer3.pt",
            "--out",
            f"{tmp_path}/features/layer3.h5",
            "--device",
            "cpu",
        ],
    ]
    for argv in commands:
        args = parser.parse_args(argv)
        args.func(args)
    assert sorted(p.name for p in (tmp_path / "acts").iterdir()) == ["layer1.h5", "layer3.h5"]
    assert json.loads((tmp_path / "sae" / "layer3.json").read_text())["steps"] == 20
    with h5py.File(tmp_path / "features" / "layer3.h5") as out:
        assert out["image"].shape == (8, 3) and out.attrs["layer"] == 3
        assert set(out["image"][:].ravel()) <= set(range(10, 16)) | {-1}  # analysis rows follow the 10 train rows
