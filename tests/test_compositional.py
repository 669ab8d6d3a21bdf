"""Interventional ground truth: Shapley shares and AND/OR/single labels of toy causes, counterfactual renders
measured on real demo scenes, and the ERF-vs-truth statistics on maps with known shares."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from cafe.demo import DemoConfig, render_scene, scene_index, write_demo
from cafe.errors import CafeError
from cafe.ground_truth.causes import load_world
from cafe.ground_truth.compositional import score_map, summarize_group, truth_table
from cafe.ground_truth.config import GroundTruthConfig
from cafe.ground_truth.interventions import counterfactuals, token_on
from cafe.ground_truth.shapley import cause_label, shapley_shares, shapley_values
from cafe.images import eval_transform
from cafe.io.features import FeatureFile
from cafe.stats import spearman
from cafe.tokens import TokenLayout

CONFIG = GroundTruthConfig()
TOYS = {"min": min, "max": max, "a_alone": lambda a, b: a}  # z as a function of which parts are present


def _values(z, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """v over the subsets of parts {a, b} (bitmask index: bit 0 = a, bit 1 = b) of a toy z(a, b)."""
    return np.array([offset + scale * z(mask & 1, mask >> 1 & 1) for mask in range(4)], dtype=float)


@pytest.mark.parametrize(
    "toy, shares, label",
    [("min", [0.5, 0.5], "AND"), ("max", [0.5, 0.5], "OR"), ("a_alone", [1.0, 0.0], "single")],
)
def test_toy_causes_get_their_shapley_shares_and_labels(toy: str, shares: list[float], label: str) -> None:
    for scale, offset in [(1.0, 0.0), (3.0, 0.4)]:  # an offset below min_effect of z keeps the label
        v = _values(TOYS[toy], scale, offset)
        phi = shapley_values(v)
        assert phi.sum() == pytest.approx(v[-1] - v[0]), "efficiency: the values sum to the total effect"
        assert shapley_shares(phi) == pytest.approx(shares)
        assert cause_label(v, CONFIG.min_effect, CONFIG.suffices) == label


def test_no_effect_or_a_small_one_is_labelled_none() -> None:
    assert cause_label(np.array([2.0, 2.0, 2.0, 2.0]), 0.5, 0.5) == "none"
    assert cause_label(np.array([2.0, 2.0, 2.0, 2.5]), 0.5, 0.5) == "none", "removal takes only 20 % away"
    assert cause_label(np.array([0.0, 0.0, 0.0, -1.0]), 0.5, 0.5) == "none", "a feature that is not on"
    assert cause_label(np.array([0.0, 2.0]), 0.5, 0.5) == "single"
    assert cause_label(np.array([1.5, 2.0]), 0.5, 0.5) == "none"


def test_shapley_values_of_three_parts_match_the_formula() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=8)
    phi = shapley_values(v)
    assert phi.sum() == pytest.approx(v[-1] - v[0])
    additive = np.array([sum(w for i, w in enumerate([1.0, 2.0, 5.0]) if mask >> i & 1) for mask in range(8)])
    assert shapley_values(additive) == pytest.approx([1.0, 2.0, 5.0]), "an additive game pays each its weight"
    with pytest.raises(CafeError, match="2\\*\\*n subsets"):
        shapley_values(np.zeros(3))


def _cf_rows(z, path: str = "pills_and_frown/000000.png") -> pd.DataFrame:
    v = _values(z)
    kinds = ["frown_face", "pills"]
    return pd.DataFrame(
        {
            "layer": 2,
            "feature": 0,
            "slot": 0,
            "image": 0,
            "path": path,
            "token": 5,
            "token_on": "",
            "parts": "+".join(kinds),
            "present": range(4),
            "kept": ["+".join(k for i, k in enumerate(kinds) if m >> i & 1) for m in range(4)],
            "value": v[-1],
            "z": v,
        }
    )


def test_truth_table_names_the_part_with_the_largest_effect() -> None:
    truth = truth_table(_cf_rows(lambda a, b: 0.2 * a + b), CONFIG)
    row = truth.iloc[0]
    assert (row.part_a, row.part_b, row.label, row.top_part) == ("frown_face", "pills", "single", "pills")
    assert row.shapley_a == pytest.approx(0.2 / 1.2) and row.z_all == pytest.approx(1.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo(DemoConfig(n_images=8, seed=0), out)
    return out


class ToyTarget:
    """A hand-made 'tower': z_f(I) = TOYS[f](a, b), where a / b say whether frown_face / pills are drawn in I."""

    layer = 2

    def __init__(self, world: Path, path: str):
        objects = pd.read_csv(world / "objects.csv")
        rows = objects[(objects["path"] == path) & objects["causal"]].sort_values("kind")
        index, transform = scene_index(path), eval_transform(64)
        full = render_scene(DemoConfig(seed=0), index)
        bare = render_scene(DemoConfig(seed=0), index, set(rows["object"]))
        self.bare = transform(_pil(bare.image))
        self.masks = [torch.as_tensor(full.labels == obj) for obj in rows["object"]]
        self.backbone = argparse.Namespace(normalize=lambda images: images)
        self.batches = 0

    def __call__(self, pixels: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        drawn = (pixels - self.bare).abs().amax(1)  # (B, H, W)
        a, b = ((drawn[:, m] > 0.02).float().mean(-1) > 0.5 for m in self.masks)
        z = [torch.minimum(a, b), torch.maximum(a, b), a]
        return torch.stack([z[int(f)][i] for i, f in enumerate(features)])


def _pil(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(pixels)


def _features(token: int, value: float = 1.0) -> FeatureFile:
    """Features 0 (min), 1 (max) and 2 (a alone), each with image 0 (pills and frown) as its only target."""
    image = np.array([[0], [0], [0]])
    return FeatureFile(
        "toy.h5", 2, 8, "", "", np.arange(3), image, np.full_like(image, token), np.full(image.shape, value),
        np.zeros(image.shape + (65,)), np.ones(3), np.zeros(3, bool),
    )  # fmt: skip


def test_counterfactuals_of_real_renders_recover_and_or_and_single(world: Path) -> None:
    path = "pills_and_frown/000000.png"
    manifest = pd.DataFrame({"path": [path]}, index=[0])
    toy = ToyTarget(world, path)
    rows = counterfactuals(
        _features(token=1), manifest, load_world(world / "objects.csv", world / "masks.h5"), toy, 5, 64
    )
    assert len(rows) == 3 * 4 and toy.batches == 3, "4 subsets per target, measured 5 rows per forward"
    assert set(rows["parts"]) == {"frown_face+pills"}
    assert set(rows["kept"]) == {"", "frown_face", "pills", "frown_face+pills"}
    truth = truth_table(rows, CONFIG).set_index("feature")
    assert truth["label"].tolist() == ["AND", "OR", "single"]
    assert truth["shapley_a"].tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert truth.at[2, "top_part"] == "frown_face"


def test_re_rendered_original_must_reproduce_the_recorded_activation(world: Path) -> None:
    path = "pills_and_frown/000000.png"
    manifest = pd.DataFrame({"path": [path]}, index=[0])
    toy = ToyTarget(world, path)
    live = load_world(world / "objects.csv", world / "masks.h5")
    with pytest.raises(CafeError, match="re-rendered scene gives z = 1 where the features file recorded 3"):
        counterfactuals(_features(token=1, value=3.0), manifest, live, toy, 8, 64)


def test_token_on_names_the_causal_object_under_the_target_token(world: Path) -> None:
    live = load_world(world / "objects.csv", world / "masks.h5")
    path = "pills_and_frown/000000.png"
    labels = live.labels[live.row[path]]
    kinds = dict(live.objects[path])
    for obj, kind in kinds.items():
        ys, xs = np.nonzero(labels == obj)
        token = 1 + (ys[0] // 8) * 8 + xs[0] // 8
        assert token_on(live, path, int(token), TokenLayout(8)) == kind
        with_registers = TokenLayout(8, n_registers=4)  # the same patch, four positions later
        assert token_on(live, path, with_registers.patch_token(ys[0] // 8, xs[0] // 8), with_registers) == kind
        assert token_on(live, path, 1, with_registers) == ""  # a register is on no patch
    empty = [
        t
        for t in range(1, 65)
        if not labels[(t - 1) // 8 * 8 : (t - 1) // 8 * 8 + 8, (t - 1) % 8 * 8 : (t - 1) % 8 * 8 + 8].any()
    ]
    assert token_on(live, path, empty[0], TokenLayout(8)) == "" and token_on(live, path, 0, TokenLayout(8)) == "cls"


def _parts() -> list[np.ndarray]:
    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[0, 0:2], b[3, 3] = True, True  # part a covers two patches, part b one
    return [a, b]


def test_map_scores_read_known_shares() -> None:
    a, b = _parts()
    m = np.zeros((4, 4))
    m[0, 0], m[0, 1], m[3, 3], m[2, 0] = 0.1, 0.2, 0.7, 1.0  # 0.3 on a, 0.7 on b, 1.0 elsewhere
    m[1, 1] = -5.0  # negative evidence is no mass
    scores = score_map(m, [a, b], top=1)
    assert scores["share_a"] == pytest.approx(0.3) and scores["weaker"] == pytest.approx(0.3 / 2.0)
    assert scores["hit_top"] == 0.0, "the peak is off both parts"
    assert np.isnan(score_map(m, [a, b], top=None)["hit_top"]), "no cause, no pointing game"
    uniform = score_map(np.ones((4, 4)), [a, b], top=0)
    assert uniform["share_a"] == pytest.approx(2 / 3) and uniform["hit_top"] == pytest.approx(2 / 16)
    assert uniform["weaker"] == pytest.approx(1 / 16)
    assert np.isnan(score_map(np.full((4, 4), np.nan), [a, b], top=0)["share_a"])


def test_spearman_matches_scipy_and_summary_recovers_known_statistics() -> None:
    rng = np.random.default_rng(1)
    pairs = rng.random((40, 2))
    assert spearman(pairs[:, 0], pairs[:, 1]) == pytest.approx(stats.spearmanr(pairs[:, 0], pairs[:, 1]).statistic)
    truth = rng.random(60)
    labels = np.array(["AND", "OR", "single"] * 20)
    weaker = np.where(labels == "AND", 0.1, 0.3)
    for share, rho, mae in [(truth, 1.0, 0.0), (1 - truth, -1.0, np.abs(1 - 2 * truth).mean())]:
        scores = pd.DataFrame({"label": labels, "share_a": share, "shapley_a": truth, "weaker": weaker, "hit_top": 1.0})
        s = summarize_group(scores, resamples=200)
        assert s["spearman"] == pytest.approx(rho) and s["mae"] == pytest.approx(mae)
        assert s["spearman_n"] == 60 and s["and_weaker_n"] == s["or_weaker_n"] == 20
        assert s["and_weaker"] == pytest.approx(0.1) and s["or_weaker"] == pytest.approx(0.3)
        assert s["mae_lo"] <= s["mae"] <= s["mae_hi"] and s["hit_top"] == 1.0
    noisy = pd.DataFrame({"label": "AND", "share_a": truth + rng.normal(0, 0.2, 60), "shapley_a": truth,
                          "weaker": rng.random(60), "hit_top": rng.integers(0, 2, 60).astype(float)})  # fmt: skip
    s = summarize_group(noisy, resamples=500)
    assert 0.3 < s["spearman_lo"] < s["spearman"] < s["spearman_hi"] < 1.0
    assert s["and_weaker_lo"] < noisy["weaker"].mean() < s["and_weaker_hi"] and np.isnan(s["or_weaker"])


def test_none_targets_and_single_part_targets_stay_out_of_the_share_comparison() -> None:
    scores = pd.DataFrame(
        {
            "label": ["none", "single", "AND", "OR"],
            "share_a": [0.9, np.nan, 0.5, 0.4],
            "shapley_a": [0.1, np.nan, 0.5, 0.5],
            "weaker": [0.1, np.nan, 0.2, 0.3],
            "hit_top": [np.nan, 1.0, 0.0, 1.0],
        }
    )
    s = summarize_group(scores, resamples=50)
    assert s["spearman_n"] == 2 and s["hit_top_n"] == 3 and s["and_weaker_n"] == 1


def _write_layer(root: Path, world: Path, rows: pd.DataFrame) -> None:
    """features.h5 for the toy's three targets, and two ERF methods: all mass on frown_face, mass on both parts."""
    import h5py

    from cafe.ground_truth.compositional_report import part_masks

    live = load_world(world / "objects.csv", world / "masks.h5")
    face, pills = part_masks(live, "pills_and_frown/000000.png", 8, 0.25)
    with h5py.File(root / "features.h5", "w") as h5:
        h5["feature"], h5["image"], h5["token"] = np.arange(3), np.zeros((3, 1), int), np.ones((3, 1), int)
        h5["value"], h5["max_value"], h5["cls_only"] = np.ones((3, 1)), np.ones(3), np.zeros(3, bool)
        h5["act_map"] = np.zeros((3, 1, 65))
        h5.attrs.update(layer=2, grid=8, sae_fingerprint="")
    for method, m in {"on_face": face * 1.0, "on_both": face + 2.0 * pills}.items():
        (root / "erf" / "layer2").mkdir(parents=True, exist_ok=True)
        with h5py.File(root / "erf" / "layer2" / f"{method}.h5", "w") as h5:
            h5["maps"] = np.broadcast_to(m, (3, 1, 8, 8)).astype(np.float32)
            h5.attrs.update(method=method, layer=2)
    rows.to_csv(root / "counterfactual.csv", index=False)


def test_cli_writes_truth_scores_table_figure_and_metrics(world: Path, tmp_path: Path) -> None:
    from cafe.ground_truth.compositional_report import register

    path = "pills_and_frown/000000.png"
    live = load_world(world / "objects.csv", world / "masks.h5")
    rows = counterfactuals(
        _features(token=1), pd.DataFrame({"path": [path]}, index=[0]), live, ToyTarget(world, path), 8, 64
    )
    _write_layer(tmp_path, world, rows)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "out"
    argv = f'compositional --params {{"bootstrap":50}} --layers 2 --features {tmp_path / "features.h5"} '
    argv += (
        f"--counterfactuals {tmp_path / 'counterfactual.csv'} --erf-dir {tmp_path / 'erf'} --methods on_face on_both "
    )
    argv += f"--objects {world / 'objects.csv'} --masks {world / 'masks.h5'} --out-targets {out / 't.csv'} "
    argv += f"--out-table {out / 'table.csv'} --out-figure {out / 'c.png'} --metrics {out / 'm.json'}"
    args = parser.parse_args(argv.split())
    args.func(args)
    scores = pd.read_csv(out / "t.csv")
    assert set(scores["method"]) == {"on_face", "on_both", "activation", "uniform"}
    face = scores[scores["method"] == "on_face"]
    assert (face["share_a"] == 1).all() and (face["weaker"] == 0).all()
    both = scores[scores["method"] == "on_both"].set_index("feature")
    assert both.at[2, "hit_top"] == 0.0 and both.at[0, "label"] == "AND", "a-alone's top part is the face"
    assert np.isnan(scores[scores["method"] == "activation"]["share_a"]).all(), "an all-zero map has no shares"
    table = pd.read_csv(out / "table.csv")
    assert set(table["layer"].astype(str)) == {"2", "all"}
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["labels"]["all"] == {"2_parts": {"AND": 1, "OR": 1, "single": 1}}
    assert metrics["layer2"]["on_face"]["and_weaker_n"] == 1
    assert (out / "c.png").stat().st_size > 10_000
