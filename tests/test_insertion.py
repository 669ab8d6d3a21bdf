"""Insertion tests: curves, orders, the greedy ceiling, a planted non-local feature and the `cafe insertion` CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from planted import planted_world

from cafe.backbone import Backbone
from cafe.cli import main
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget
from cafe.insertion.canvases import make_canvas
from cafe.insertion.config import InsertionConfig
from cafe.insertion.curves import compose, curves, keep_masks, measure
from cafe.insertion.orders import rank_patches, step_counts, target_rng
from cafe.insertion.run import layer_curves
from cafe.insertion.selection import activation_scores, erf_scores, sample_targets, select_targets
from cafe.insertion.summary import curve_aucs, per_target
from cafe.io import file_hash
from cafe.io.features import FEATURE_DATASETS, FeatureFile, read_features
from cafe.sae import SAEConfig, save_checkpoint

LAYER = 2
TINY = {"model": "cafe-tiny-vit", "pretrained": None, "seed": 0, "device": "cpu"}


def feature_file(
    backbone: Backbone,
    sae: torch.nn.Module,
    images: torch.Tensor,
    n_features: int = 6,
    top_k: int = 2,
    layer: int = LAYER,
    fingerprint: str = "",
    manifest_hash: str = "",
) -> FeatureFile:
    """Top images and activation maps of the first features, computed like the features step does."""
    with torch.no_grad():
        latents = FeatureTarget(backbone, sae, layer).latents(backbone.normalize(images))[..., :n_features]
    peak = latents[:, 1:].amax(dim=1)  # (B, F) over patch tokens
    image = peak.argsort(dim=0, descending=True)[:top_k].T.numpy()  # (F, K)
    act_map = np.stack([latents[image[f], :, f].numpy() for f in range(n_features)])  # (F, K, T)
    token = 1 + act_map[..., 1:].argmax(-1)
    value = np.take_along_axis(act_map, token[..., None], -1)[..., 0]
    return FeatureFile(
        "features.h5",
        layer,
        backbone.grid,
        fingerprint,
        manifest_hash,
        np.arange(n_features),
        image,
        token,
        value,
        act_map,
        value.max(axis=1),
        np.zeros(n_features, bool),
    )


def loader(images: torch.Tensor):
    return lambda indices: images[torch.as_tensor(indices)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_inserting_every_patch_gives_the_original_and_none_gives_the_canvas(tiny_backbone, tiny_sae, images):
    target = FeatureTarget(tiny_backbone, tiny_sae, LAYER)
    canvas = make_canvas("blur", images, tiny_backbone, 1.0)
    orders = np.stack([np.random.default_rng(i).permutation(16) for i in range(len(images))])
    tokens, features = np.arange(len(images)) + 1, np.arange(len(images))
    ins, dels = curves(target, images, canvas, orders, step_counts(16, 4), np.arange(len(images)), tokens, features, 5)
    every = compose(images, canvas, torch.ones(len(images), 16, dtype=torch.bool), tiny_backbone.patch_size)
    assert torch.equal(every, images)
    with torch.no_grad():
        z_orig = target(tiny_backbone.normalize(images), torch.as_tensor(tokens), torch.as_tensor(features)).numpy()
        z_canvas = target(tiny_backbone.normalize(canvas), torch.as_tensor(tokens), torch.as_tensor(features)).numpy()
    np.testing.assert_allclose(ins[:, -1], z_orig, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ins[:, 0], z_canvas, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(dels[:, 0], ins[:, -1])
    np.testing.assert_array_equal(dels[:, -1], ins[:, 0])


def test_mean_canvas_is_zero_in_normalised_space(tiny_backbone, images):
    canvas = make_canvas("mean", images, tiny_backbone, 1.0)
    assert torch.allclose(tiny_backbone.normalize(canvas), torch.zeros_like(images), atol=1e-6)


def test_batched_curves_equal_one_forward_per_step(tiny_backbone, tiny_sae, images):
    target = FeatureTarget(tiny_backbone, tiny_sae, LAYER)
    canvas = make_canvas("mean", images[:2], tiny_backbone, 1.0)
    orders = np.stack([np.random.default_rng(i).permutation(16) for i in range(2)])
    counts = step_counts(16, 5)
    ins, dels = curves(target, images[:2], canvas, orders, counts, np.arange(2), np.array([3, 7]), np.array([1, 2]), 64)
    for c in range(2):
        for kind, curve in (("insertion", ins), ("deletion", dels)):
            for step, n in enumerate(counts):
                inserted = np.isin(np.arange(16), orders[c, :n])
                keep = torch.as_tensor(inserted if kind == "insertion" else ~inserted)[None]
                pixels = compose(images[c : c + 1], canvas[c : c + 1], keep, tiny_backbone.patch_size)
                with torch.no_grad():
                    z = target(tiny_backbone.normalize(pixels), torch.tensor([[3, 7][c]]), torch.tensor([c + 1]))
                assert curve[c, step] == pytest.approx(z.item(), rel=1e-5, abs=1e-6)


def test_seeds_of_a_target_share_their_equal_masked_images_and_measure_each_once(tiny_backbone, tiny_sae, images):
    """Two orders of one target that agree on their first half: the empty, full and shared-prefix images run once."""
    target = FeatureTarget(tiny_backbone, tiny_sae, LAYER)
    canvas = make_canvas("mean", images[:1], tiny_backbone, 1.0)
    first = np.random.default_rng(0).permutation(16)
    orders = np.stack([first, np.concatenate([first[:8], first[8:][::-1]])])
    counts = step_counts(16, 4)  # 0, 4, 8, 12, 16 patches: steps 0-2 equal, 3 differs, 4 equal
    forwarded = []

    def counted(pixels, tokens, features):
        forwarded.append(len(pixels))
        return target(pixels, tokens, features)

    masks = keep_masks(orders, counts)
    z = measure(target, images[:1], canvas, masks, np.zeros(2, int), np.array([3, 3]), np.array([1, 1]), 64, counted)
    distinct = len({(m.numpy().tobytes()) for m in masks.reshape(-1, 16)})
    assert sum(forwarded) == distinct < masks.shape[0] * masks.shape[1]
    with torch.no_grad():
        each = target(
            tiny_backbone.normalize(
                compose(images[[0] * 16], canvas[[0] * 16], masks.reshape(-1, 16), tiny_backbone.patch_size)
            ),
            torch.full((16,), 3),
            torch.full((16,), 1),
        )
    np.testing.assert_allclose(z.ravel(), each.numpy(), rtol=1e-5, atol=1e-6)


def test_steps_are_grid_aligned_and_insert_every_patch():
    assert step_counts(64, 16).tolist() == list(range(0, 65, 4))
    counts = step_counts(16, 3)
    assert counts[0] == 0 and counts[-1] == 16 and np.all(np.diff(counts) > 0)
    masks = keep_masks(np.arange(16)[None], counts)
    assert masks.shape == (1, 6, 16) and masks[0, 3].all() and not masks[0, 0].any()


def test_ties_break_randomly_per_seed_not_top_left_first():
    flat = np.zeros(16)
    orders = np.stack([rank_patches(flat, target_rng(seed, LAYER, 0, 0)) for seed in range(400)])
    assert len({tuple(o) for o in orders[:3]}) == 3
    assert orders[:, 0].mean() == pytest.approx(7.5, abs=1.0)  # first patch is uniform, not patch 0
    assert np.bincount(orders[:, 0], minlength=16).max() < 60
    sparse = np.zeros(16)
    sparse[[5, 9]] = [2.0, 1.0]
    assert all(rank_patches(sparse, target_rng(s, LAYER, 0, 0))[:2].tolist() == [5, 9] for s in range(10))


def pairs(targets) -> set[tuple[int, int]]:
    return set(zip(targets.row.tolist(), targets.rank.tolist()))


def test_a_layer_with_no_clearly_active_target_gives_empty_orders_for_every_method(tiny_backbone, tiny_sae, images):
    ff = feature_file(tiny_backbone, tiny_sae, images)
    silent = select_targets(dataclasses.replace(ff, value=np.zeros_like(ff.value)), 0.1)
    maps = ff.act_map[..., 1:].reshape(*ff.image.shape, ff.grid, ff.grid)
    assert len(silent) == 0
    assert erf_scores(maps, silent).shape == activation_scores(ff, silent).shape == (0, ff.grid * ff.grid)


def test_greedy_subset_lies_inside_the_tested_subset(tiny_backbone, tiny_sae, images):
    targets = select_targets(feature_file(tiny_backbone, tiny_sae, images), 0.0)
    tested, greedy = sample_targets(targets, 7, LAYER), sample_targets(targets, 3, LAYER)
    assert len(tested) == 7 and len(greedy) == 3 and pairs(greedy) <= pairs(tested)
    assert len(sample_targets(targets, None, LAYER)) == len(targets)


def test_recovery_is_undefined_where_the_canvas_leaves_nothing_to_recover(tiny_backbone, tiny_sae, images):
    ff = feature_file(tiny_backbone, tiny_sae, images)
    frame = layer_curves(
        "random", InsertionConfig(steps=4, seeds=2, canvases=("mean",)), tiny_backbone, tiny_sae, ff, loader(images)
    )
    ends = frame[frame["step"].isin([0, 4]) & (frame["kind"] == "insertion")]
    gap = ends.pivot_table(index=["feature", "rank", "seed"], columns="step", values="z").diff(axis=1)[4]
    rec = frame.groupby(["feature", "rank", "seed"])["recovery"].apply(lambda r: r.isna().all())
    assert (rec[gap.index] == (gap < 0.1 * ff.max_value[gap.index.get_level_values("feature")])).all()
    curve = frame[(frame["kind"] == "insertion") & frame["recovery"].notna()]
    assert np.allclose(curve[curve["step"] == 0]["recovery"], 0) and np.allclose(
        curve[curve["step"] == 4]["recovery"], 1
    )


def test_greedy_is_at_least_as_good_as_every_method_on_its_subset(tiny_backbone, tiny_sae, images):
    ff = feature_file(tiny_backbone, tiny_sae, images)
    config = InsertionConfig(steps=4, seeds=2, greedy_targets=3, canvases=("mean",), min_activation=0.0)
    frames = [
        layer_curves(m, config, tiny_backbone, tiny_sae, ff, loader(images)) for m in ("random", "activation", "greedy")
    ]
    aucs = per_target(curve_aucs(pd.concat(frames)))
    wide = aucs.pivot_table(index=["kind", "feature", "rank"], columns="method", values="auc").dropna()
    assert len(wide.loc["insertion"]) == 3
    assert (wide.loc["insertion", "greedy"] >= wide.loc["insertion"][["random", "activation"]].max(axis=1) - 1e-6).all()
    assert (wide.loc["deletion", "greedy"] <= wide.loc["deletion"][["random", "activation"]].min(axis=1) + 1e-6).all()


def test_erf_order_recovers_a_planted_nonlocal_feature_faster_than_activation_order():
    world = planted_world()
    target = FeatureTarget(world.backbone, world.sae, world.layer)
    with torch.no_grad():
        act_map = target.latents(world.backbone.normalize(world.images))[..., world.feature].numpy()[None]  # (1, 1, T)
    value = act_map[..., world.token]
    ff = FeatureFile(
        "planted.h5",
        world.layer,
        world.backbone.grid,
        "",
        "",
        np.array([world.feature]),
        np.zeros((1, 1), int),
        np.full((1, 1), world.token),
        value,
        act_map,
        value.max(axis=1),
        np.zeros(1, bool),
    )
    erf = np.zeros((1, 1, world.backbone.grid**2), np.float32)
    erf[..., world.source - 1] = 1.0  # the ERF's peak: patch p (token p = patch p - 1)
    config = InsertionConfig(steps=16, seeds=3, canvases=("mean",))
    frames = [
        layer_curves(method, config, world.backbone, world.sae, ff, loader(world.images), maps)
        for method, maps in (("erf", erf.reshape(1, 1, 4, 4)), ("activation", None))
    ]
    auc = per_target(curve_aucs(pd.concat(frames))).set_index(["method", "kind"])["auc"]
    assert auc["erf", "insertion"] > 0.9 and auc["erf", "insertion"] > auc["activation", "insertion"] + 0.2
    assert auc["erf", "deletion"] < 0.1 and auc["erf", "deletion"] < auc["activation", "deletion"] - 0.2


# --- the `cafe insertion` / `cafe greedy` command and its input checks ---------------------------------------


@pytest.fixture()
def layer_inputs(tmp_path: Path, tiny_backbone, tiny_sae) -> dict[str, Path]:
    """Images + manifest, an SAE checkpoint, a features file and an ERF file for layer 2 of the tiny tower."""
    rng = np.random.default_rng(0)
    (tmp_path / "images" / "a").mkdir(parents=True)
    paths = [f"a/{i}.png" for i in range(6)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "images" / path)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"index": range(6), "split": "analysis", "path": paths, "class": "a"}).to_csv(manifest, index=False)
    sae_path = tmp_path / "sae.pt"
    fingerprint = save_checkpoint(sae_path, tiny_sae, SAEConfig(), {"layer": LAYER})
    from cafe.images import load_images

    images = load_images(tmp_path / "images", paths, 32)
    ff = feature_file(
        tiny_backbone, tiny_sae, images, n_features=3, fingerprint=fingerprint, manifest_hash=file_hash(manifest)
    )
    features = tmp_path / "features.h5"
    with h5py.File(features, "w") as h5:
        for name in FEATURE_DATASETS:
            h5[name] = getattr(ff, name)
        h5.attrs.update(
            {
                "layer": LAYER,
                "grid": ff.grid,
                "n_tokens": 17,
                "sae_fingerprint": fingerprint,
                "manifest_hash": file_hash(manifest),
            }
        )
    erf = write_erf(tmp_path / "gradient.h5", "gradient", LAYER, ff.act_map[..., 1:].reshape(3, 2, 4, 4))
    return {"images": tmp_path / "images", "manifest": manifest, "sae": sae_path, "features": features, "erf": erf}


def write_erf(path: Path, method: str, layer: int, maps: np.ndarray) -> Path:
    with h5py.File(path, "w") as h5:
        h5["maps"] = maps.astype(np.float32)
        h5.attrs.update({"method": method, "layer": layer})
    return path


def cli(inputs: dict[str, Path], out: Path, *extra: str, command: str = "insertion") -> int:
    return main(
        [
            command,
            "--params",
            json.dumps({"steps": 4, "seeds": 2, "greedy_targets": 1}),
            "--backbone",
            json.dumps(TINY),
            "--layer",
            str(LAYER),
            "--features",
            str(inputs["features"]),
            "--sae",
            str(inputs["sae"]),
            "--manifest",
            str(inputs["manifest"]),
            "--images-root",
            str(inputs["images"]),
            "--out",
            str(out),
            *extra,
        ]
    )


def test_cli_writes_long_curves_for_erf_activation_and_greedy(layer_inputs, tmp_path):
    out = tmp_path / "insertion" / "gradient.csv"
    assert cli(layer_inputs, out, "--method", "gradient", "--erf", str(layer_inputs["erf"])) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == [
        "layer",
        "method",
        "canvas",
        "kind",
        "feature",
        "rank",
        "image",
        "token",
        "seed",
        "step",
        "fraction",
        "z",
        "recovery",
    ]
    assert set(frame["canvas"]) == {"mean", "blur"} and set(frame["kind"]) == {"insertion", "deletion"}
    assert frame["fraction"].min() == 0 and frame["fraction"].max() == 1
    assert cli(layer_inputs, tmp_path / "greedy.csv", command="greedy") == 0
    greedy = pd.read_csv(tmp_path / "greedy.csv")
    assert greedy.groupby(["feature", "rank"]).ngroups == 1 and set(greedy["method"]) == {"greedy"}


@pytest.mark.parametrize(
    "method,layer,shape,message",
    [
        ("gradient", LAYER + 1, (3, 2, 4, 4), "layer 3"),
        ("gradient", LAYER, (3, 2, 3, 3), "shape"),
        ("ig", LAYER, (3, 2, 4, 4), "method 'ig'"),
    ],
)
def test_erf_file_for_another_layer_method_or_shape_is_named(
    layer_inputs, tmp_path, capsys, method, layer, shape, message
):
    erf = write_erf(tmp_path / "bad.h5", method, layer, np.zeros(shape))
    assert cli(layer_inputs, tmp_path / "out.csv", "--method", "gradient", "--erf", str(erf)) == 2
    err = capsys.readouterr().err
    assert "bad.h5" in err and message in err
    assert not (tmp_path / "out.csv").exists()


def test_erf_file_of_another_sae_is_named(layer_inputs, tmp_path, capsys):
    erf = write_erf(tmp_path / "old.h5", "gradient", LAYER, np.zeros((3, 2, 4, 4)))
    with h5py.File(erf, "a") as h5:
        h5.attrs["sae_fingerprint"] = "0ld5ae000000"
    assert cli(layer_inputs, tmp_path / "out.csv", "--method", "gradient", "--erf", str(erf)) == 2
    assert "old.h5: ERF maps of SAE 0ld5ae000000" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "gradient", "--erf", "missing.h5"], "missing.h5: file not found"),
        (["--method", "gradient"], "--erf is required"),
        (["--method", "activation", "--erf", "x.h5"], "--erf is not used"),
    ],
)
def test_missing_or_misplaced_erf_file_is_a_clear_error(layer_inputs, tmp_path, capsys, args, message):
    assert cli(layer_inputs, tmp_path / "out.csv", *args) == 2
    assert message in capsys.readouterr().err


def test_features_of_another_layer_are_refused(layer_inputs):
    with h5py.File(layer_inputs["features"], "a") as h5:
        h5.attrs["layer"] = LAYER + 1
    with pytest.raises(CafeError, match="features of layer 3, but layer 2 was asked for"):
        read_features(layer_inputs["features"], LAYER, 4)


def test_features_made_with_another_sae_are_refused(layer_inputs, tmp_path, capsys):
    with h5py.File(layer_inputs["features"], "a") as h5:
        h5.attrs["sae_fingerprint"] = "0123456789ab"
    assert cli(layer_inputs, tmp_path / "out.csv", "--method", "random") == 2
    assert "made with SAE 0123456789ab" in capsys.readouterr().err
