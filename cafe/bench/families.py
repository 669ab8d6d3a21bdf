"""`cafe bench --families`: AttnLRP's cost against plain autograd (gradient x input: one forward and one backward
through the same blocks) on one tower of each backbone family, random weights, the same targets. AttnLRP runs
one forward and one backward too, so the ratio says what its rules cost on each family's blocks (the issue's
bar: at least 0.8x the speed of autograd)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cafe.backbone import BackboneConfig
from cafe.backbone.tower import Backbone
from cafe.bench.fixtures import random_images, random_sae, random_targets
from cafe.bench.harness import Harness, summary
from cafe.bench.measure import Timer, stage_record
from cafe.erf.config import ErfConfig
from cafe.erf.registry import make_method
from cafe.feature_target import FeatureTarget
from cafe.io import write_json

# family -> (model, image size): base-size towers of each layout, timm's names (no download: random weights)
TOWERS = {
    "openclip": ("ViT-B-16", None),
    "timm-dinov2-reg4": ("vit_base_patch14_reg4_dinov2", 224),
    "timm-siglip": ("vit_base_patch16_siglip_224", None),
    "timm-clip": ("vit_base_patch16_clip_quickgelu_224", None),
}
QUICK = {"openclip": ("cafe-tiny-vit", None), "timm-dinov2-reg4": ("vit_cafe_tiny_patch8_reg4_dinov2", None)}


def family_ratio(backbone: Backbone, timer: Timer, targets: int, layer: int) -> dict[str, Any]:
    """Records of AttnLRP and gradient x input at `layer` on `targets` targets, timed in alternating pairs, and
    AttnLRP's speed relative to autograd per pair (median, min, max)."""
    sae = random_sae(backbone.width, 4, timer.device)
    tokens, features = random_targets(targets, backbone, sae.n_latents)
    images = random_images(targets, backbone.image_size, timer.device)
    target, config = FeatureTarget(backbone, sae, layer), ErfConfig()
    runs = {name: make_method(name, target, config) for name in ("attnlrp", "gradient")}
    calls = [lambda method=method: method.attribute(images, tokens, features) for method in runs.values()]
    t_lrp, t_grad, ratio = timer.pair(*calls)
    records = {
        name: stage_record(f"{name}: {targets} targets at layer {layer}", "targets", targets, timing, 0.0)
        for name, timing in zip(runs, (t_lrp, t_grad))
    }
    speed = summary([1 / r for r in ratio["runs"]])  # seconds(autograd) / seconds(AttnLRP), pair by pair
    records["attnlrp_vs_autograd"] = {**speed, "void": ratio["void"]}
    return records


def run_families(out: Path, device: torch.device, quick: bool, harness: Harness, targets: int = 8) -> dict[str, Any]:
    """Every family's tower: AttnLRP vs autograd at its last block; written to `out` as JSON."""
    timer = Timer(harness, device, warmup=1, pairs=1 if quick else None)
    results: dict[str, Any] = {"admission": harness.admit()}
    for family, (model, size) in (QUICK if quick else TOWERS).items():
        backbone = Backbone.load(BackboneConfig(model, seed=0, device=str(device), image_size=size))
        results[family] = {"model": model, **family_ratio(backbone, timer, targets, backbone.depth)}
    write_json(out, results)
    return results
