"""The demo tower: trained seeded, saved as an OpenCLIP checkpoint that `Backbone.load` reads like any other."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from cafe.backbone import Backbone, BackboneConfig
from cafe.config import parse_section
from cafe.demo import DemoConfig, write_demo
from cafe.demo.backbone import DemoBackboneConfig, load_image_folder, logits, register, split_holdout
from cafe.errors import CafeError

MODEL = "cafe-tiny-vit"  # 32 px, 4x4 patches of 8 px, width 32, 3 blocks
PARAMS = {"epochs": 6, "batch_size": 16, "lr": 0.003, "weight_decay": 0.0, "holdout": 0.25, "seed": 0}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo(DemoConfig(n_images=64, image_size=32, seed=0), out)
    return out / "images"


def _train(images: Path, out: Path, params: dict = PARAMS) -> tuple[dict, dict]:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "train-demo-backbone",
            "--params",
            json.dumps(params),
            "--model",
            MODEL,
            "--images",
            str(images),
            "--out",
            str(out / "demo.pt"),
            "--metrics",
            str(out / "demo.json"),
        ]
    )
    args.func(args)
    return torch.load(out / "demo.pt", weights_only=True), json.loads((out / "demo.json").read_text())


@pytest.fixture(scope="module")
def trained(images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    out = tmp_path_factory.mktemp("run")
    return (out, *_train(images, out))


def test_checkpoint_loads_through_backbone_load_with_the_trained_outputs(images: Path, trained: tuple) -> None:
    out, blob, _ = trained
    backbone = Backbone.load(BackboneConfig(MODEL, pretrained=str(out / "demo.pt"), device="cpu"))
    for name, value in backbone.visual.state_dict().items():
        assert torch.equal(value, blob["state_dict"][f"visual.{name}"]), name
    head = torch.nn.Linear(*blob["head"]["weight"].shape[::-1])
    head.load_state_dict(blob["head"])
    data = load_image_folder(images, 32)
    with torch.no_grad():
        predicted = logits(backbone, head, data.pixels).argmax(1)
    accuracy = (predicted == data.targets).float().mean().item()
    metrics = blob["metrics"]
    n_train, n_held = metrics["n_train"], metrics["n_holdout"]
    expected = (metrics["train_accuracy"] * n_train + metrics["holdout"]["accuracy"] * n_held) / (n_train + n_held)
    assert accuracy == pytest.approx(expected, abs=1e-6)
    assert blob["classes"] == list(data.classes)


def test_training_is_seeded_and_reproducible(images: Path, trained: tuple, tmp_path: Path) -> None:
    _, first, metrics = trained
    again, metrics_again = _train(images, tmp_path)
    assert all(torch.equal(first["state_dict"][k], again["state_dict"][k]) for k in first["state_dict"])
    assert metrics_again["loss"] == metrics["loss"]


def test_loss_decreases_and_metrics_report_compositional_accuracy(trained: tuple) -> None:
    _, _, metrics = trained
    assert len(metrics["loss"]) == PARAMS["epochs"]
    assert metrics["loss"][-1] < metrics["loss"][0]
    held = metrics["holdout"]
    assert 0 <= held["accuracy"] <= 1 and held["compositional"] is not None
    assert set(held["per_class"]) >= {"pills_and_frown", "balloons_and_smile"}
    assert metrics["model"] == MODEL


def test_holdout_is_stratified_and_disjoint() -> None:
    targets = torch.arange(4).repeat_interleave(10)
    train, held = split_holdout(targets, 0.2, seed=0)
    assert set(train.tolist()).isdisjoint(held.tolist()) and len(train) + len(held) == 40
    assert torch.bincount(targets[held]).tolist() == [2, 2, 2, 2]


def test_bad_params_and_empty_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(CafeError, match="demo.backbone.holdout"):
        parse_section(DemoBackboneConfig, {"holdout": 1.5}, "demo.backbone")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CafeError, match="no class folders"):
        load_image_folder(tmp_path / "empty", 32)
