"""ERF methods: one interface, IG completeness, KernelSHAP efficiency, every method finds a planted cause, and the
`cafe erf` step writes its file contract."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_image_folder
from planted import planted_world

from cafe.config import parse_section
from cafe.erf import METHODS, ErfConfig, make_method
from cafe.erf.command import run_erf
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget
from cafe.images import load_images
from cafe.io import file_hash
from cafe.sae import SAEConfig, save_checkpoint

LAYER = 2
TOKENS = torch.tensor([0, 5, 11])
IG_STEPS = 32
IG_COMPLETENESS_RTOL = 0.02  # |sum of map - (z(I) - z(canvas))| <= 2% of |z(I) - z(canvas)| at 32 steps
FAST = {"batch_size": 128, "kernelshap": {"samples": 48}, "ig": {"steps": IG_STEPS}}


def config(**sections) -> ErfConfig:
    return parse_section(ErfConfig, {**FAST, **sections}, "erf")


@pytest.fixture(scope="module")
def world(tiny_backbone, tiny_sae):
    """Random images with, at each target token, its most active feature."""
    target = FeatureTarget(tiny_backbone, tiny_sae, LAYER)
    images = torch.rand(len(TOKENS), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    features = target.latents(tiny_backbone.normalize(images))[torch.arange(len(TOKENS)), TOKENS].argmax(-1)
    return target, images, features


@pytest.fixture(scope="module")
def explained(world) -> dict:
    """Every method's Attribution of the same targets, computed once for the tests below."""
    target, images, features = world
    return {name: make_method(name, target, config()).explain(images, TOKENS, features) for name in METHODS}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_maps_each_target_onto_the_patch_grid(world, explained, name):
    target, images, features = world
    out = explained[name]
    assert out.maps.shape == (len(TOKENS), 4, 4) and torch.isfinite(out.maps).all()
    z = target(target.backbone.normalize(images), TOKENS, features)
    torch.testing.assert_close(out.value, z, rtol=1e-5, atol=1e-6)


def test_integrated_gradients_is_complete_within_tolerance(explained):
    out = explained["ig"]
    gap = out.maps.sum((1, 2)) + out.absorbed  # = z(I) - z(mean canvas)
    assert (out.absorbed.abs() <= IG_COMPLETENESS_RTOL * gap.abs()).all(), (out.absorbed, gap)


def test_kernelshap_is_efficient_and_seeded(world, explained):
    target, images, features = world
    first, again = (
        explained["kernelshap"],
        make_method("kernelshap", target, config()).explain(images, TOKENS, features),
    )
    torch.testing.assert_close(first.maps, again.maps)
    last = make_method("kernelshap", target, config()).explain(images[-1:], TOKENS[-1:], features[-1:])
    torch.testing.assert_close(last.maps[0], first.maps[-1])  # a target's map does not depend on its batch
    assert (first.absorbed.abs() <= 1e-4 * (first.maps.sum((1, 2)) + first.absorbed).abs() + 1e-5).all()


ATTRIBUTIONS = {
    "attnlrp": ("attnlrp", {}),
    "attnlrp-cp-gamma": ("attnlrp", {"attnlrp": {"attention": "cp", "gamma": 0.25}}),
    "attnlrp-epsilon-0": ("attnlrp", {"attnlrp": {"epsilon": 0.0}}),  # exact zeros in the planted tower
    "ig": ("ig", {}),
    "kernelshap": ("kernelshap", {}),
    "gradient-x-input": ("gradient", {}),
    "saliency": ("gradient", {"gradient": {"times_input": False}}),
}


@pytest.mark.parametrize("setting", sorted(ATTRIBUTIONS))
def test_attributions_peak_at_the_patch_that_drives_the_feature(setting):
    planted = planted_world()
    name, sections = ATTRIBUTIONS[setting]
    method = make_method(name, FeatureTarget(planted.backbone, planted.sae, planted.layer), config(**sections))
    maps = method.attribute(planted.images, torch.tensor([planted.token]), torch.tensor([planted.feature]))
    assert torch.isfinite(maps).all() and maps.flatten().argmax().item() + 1 == planted.source


def test_activation_baseline_peaks_where_the_feature_fires_not_at_its_cause():
    planted = planted_world()
    method = make_method("activation", FeatureTarget(planted.backbone, planted.sae, planted.layer))
    maps = method.attribute(planted.images, torch.tensor([planted.token]), torch.tensor([planted.feature]))
    assert maps.flatten().argmax().item() + 1 == planted.token != planted.source


def test_params_take_a_scalar_gamma_for_every_group_and_refuse_unknown_keys():
    assert config(attnlrp={"gamma": 0.5}).attnlrp.gamma.mlp == 0.5
    with pytest.raises(CafeError, match="erf.attnlrp.gama"):
        config(attnlrp={"gama": 0.5})
    with pytest.raises(CafeError, match="erf.attnlrp.attention"):
        config(attnlrp={"attention": "softmax"})
    with pytest.raises(CafeError, match="unknown method 'lrp'"):
        make_method("lrp", None)


def write_inputs(tmp_path: Path, tiny_backbone, tiny_sae) -> dict:
    """A manifest over 4 images, an SAE checkpoint, and the features file of 2 features x 2 ranks (one missing),
    with activation maps measured on those images."""
    root = make_image_folder(tmp_path / "images", {"a": 2, "b": 2})
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"index": range(4), "split": "analysis", "path": paths, "class": [p[0] for p in paths]}).to_csv(
        manifest, index=False
    )
    fingerprint = save_checkpoint(tmp_path / "sae.pt", tiny_sae, SAEConfig(), {"layer": LAYER})
    feature, image, token = np.array([3, 7]), np.array([[2, 0], [3, -1]]), np.array([[5, 0], [16, 0]])
    target = FeatureTarget(tiny_backbone, tiny_sae, LAYER)
    latents = target.latents(tiny_backbone.normalize(load_images(root, paths, 32))).numpy()
    act_map = np.stack([latents[image[n], :, feature[n]] for n in range(2)])
    value = np.take_along_axis(act_map, token[..., None], -1)[..., 0]
    with h5py.File(tmp_path / "features.h5", "w") as h5:
        for name, data in dict(
            feature=feature,
            image=image,
            analysis_row=image,
            token=token,
            value=value,
            act_map=act_map,
            max_value=value.max(1),
            cls_only=np.zeros(2, bool),
        ).items():
            h5[name] = data
        h5.attrs.update(
            layer=LAYER, grid=4, n_tokens=17, sae_fingerprint=fingerprint, manifest_hash=file_hash(manifest)
        )
    return dict(
        features=str(tmp_path / "features.h5"),
        sae=str(tmp_path / "sae.pt"),
        manifest=str(manifest),
        images_root=str(root),
    )


@pytest.mark.parametrize("method", ["gradient", "activation"])
def test_erf_command_writes_maps_values_and_provenance(tmp_path, tiny_backbone, tiny_sae, method):
    inputs = write_inputs(tmp_path, tiny_backbone, tiny_sae)
    out = tmp_path / "erf" / f"{method}.h5"
    args = argparse.Namespace(
        method=method,
        params=json.dumps({"batch_size": 2}),
        layer=LAYER,
        out=str(out),
        backbone=json.dumps({"model": "cafe-tiny-vit", "seed": 0, "device": "cpu"}),
        precision="fp32",
        **inputs,
    )
    run_erf(args)
    with h5py.File(out) as h5:
        maps, value, absorbed, attrs = h5["maps"][()], h5["target_value"][()], h5["absorbed"][()], dict(h5.attrs)
    assert maps.shape == (2, 2, 4, 4) and np.isnan(maps[1, 1]).all() and np.isfinite(maps[[0, 0, 1], [0, 1, 0]]).all()
    assert attrs["method"] == method and attrs["layer"] == LAYER and attrs["n_targets"] == 3
    assert json.loads(attrs["params"])["batch_size"] == 2 and attrs["targets_per_s"] > 0
    assert json.loads(attrs["params"]).get("precision") == ("fp32" if method != "activation" else None)
    assert json.loads(attrs["crop"]) == [tiny_backbone.image_size, tiny_backbone.resize]  # the region the maps cover
    with h5py.File(inputs["features"]) as h5:
        stored = h5["value"][()]
    np.testing.assert_allclose(value[[0, 0, 1], [0, 1, 0]], stored[[0, 0, 1], [0, 1, 0]], rtol=1e-4, atol=1e-5)
    assert np.isnan(value[1, 1]) and np.isnan(absorbed[1, 1])


def test_erf_command_refuses_an_unknown_method_in_params(tmp_path):
    args = argparse.Namespace(method="gradient", params=json.dumps({"methods": ["attnlrp", "shap"]}))
    with pytest.raises(CafeError, match="erf.methods has unknown method"):
        run_erf(args)
