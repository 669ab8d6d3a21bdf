"""`cafe bench --families`: AttnLRP's cost against plain autograd (gradient x input: one forward and one backward
through the same blocks) on one tower of each backbone family, random weights, the same targets. AttnLRP runs
one forward and one backward too, so the ratio says what its rules cost on each family's blocks (the issue's
bar: at least 0.8x the speed of autograd)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cafe.backbone import Backbone, BackboneConfig
from cafe.bench.fixtures import random_images, random_sae, random_targets
from cafe.bench.measure import Timer, stage_record
from cafe.erf import ErfConfig, make_method
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
    """Records of AttnLRP and gradient x input at `layer` on `targets` targets, and their speed ratio."""
    sae = random_sae(backbone.width, 4, timer.device)
    tokens, features = random_targets(targets, backbone, sae.n_latents)
    images = random_images(targets, backbone.image_size, timer.device)
    target, config = FeatureTarget(backbone, sae, layer), ErfConfig()
    records = {}
    for name in ("attnlrp", "gradient"):
        method = make_method(name, target, config)
        timing = timer.best(lambda method=method: method.attribute(images, tokens, features))
        records[name] = stage_record(f"{name}: {targets} targets at layer {layer}", "targets", targets, timing, 0.0)
    records["attnlrp_vs_autograd"] = records["attnlrp"]["throughput"] / records["gradient"]["throughput"]
    return records


def run_families(out: Path, device: torch.device, quick: bool, targets: int = 8) -> dict[str, Any]:
    """Every family's tower: AttnLRP vs autograd at its last block; written to `out` as JSON."""
    timer = Timer(device, warmup=1)
    results = {}
    for family, (model, size) in (QUICK if quick else TOWERS).items():
        backbone = Backbone.load(BackboneConfig(model, seed=0, device=str(device), image_size=size))
        results[family] = {"model": model, **family_ratio(backbone, timer, targets, backbone.depth)}
    write_json(out, results)
    return results
