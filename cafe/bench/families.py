"""`cafe bench --families`: AttnLRP's cost against plain autograd (gradient x input: one forward and one backward
through the same blocks) on one tower of each backbone family, random weights, the same targets. AttnLRP runs
one forward and one backward too, so the ratio says what its rules cost on each family's blocks (the issue's
bar: at least 0.8x the speed of autograd). Hugging Face towers are built from their config classes (written to a
temporary folder and loaded through the `hf` family, as a local model is; nothing is downloaded)."""

from __future__ import annotations

import tempfile
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
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget
from cafe.io import write_json

HF = "hf:"  # a model named "hf:<config class>" is built from that transformers config class and its arguments
# family -> (model, image size, HF config arguments): base-size towers of each layout (random weights)
TOWERS: dict[str, tuple[str, int | None, dict[str, Any]]] = {
    "openclip": ("ViT-B-16", None, {}),
    "timm-dinov2-reg4": ("vit_base_patch14_reg4_dinov2", 224, {}),
    "timm-siglip": ("vit_base_patch16_siglip_224", None, {}),
    "timm-clip": ("vit_base_patch16_clip_quickgelu_224", None, {}),
    "hf-clip": (f"{HF}CLIPVisionConfig", None, {"patch_size": 16}),  # ViT-B/16, as openai/clip-vit-base-patch16
    "hf-dinov2": (f"{HF}Dinov2Config", None, {"image_size": 224}),  # ViT-B/14 (the config's default 518 px)
    "hf-dinov2-reg4": (f"{HF}Dinov2WithRegistersConfig", None, {"image_size": 224}),
    "hf-siglip": (f"{HF}SiglipVisionConfig", None, {}),  # ViT-B/16 at 224, as google/siglip-base-patch16-224
}
HF_TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64,
           "image_size": 32, "patch_size": 8}  # fmt: skip
QUICK: dict[str, tuple[str, int | None, dict[str, Any]]] = {
    "openclip": ("cafe-tiny-vit", None, {}),
    "timm-dinov2-reg4": ("vit_cafe_tiny_patch8_reg4_dinov2", None, {}),
    **{family: (model, None, HF_TINY) for family, (model, _, _) in TOWERS.items() if model.startswith(HF)},
}


def load_family_tower(model: str, size: int | None, hf_args: dict[str, Any], device: torch.device) -> Backbone:
    """A tower with seeded random weights: by name, or for "hf:<config class>" from that config with `hf_args`."""
    if not model.startswith(HF):
        return Backbone.load(BackboneConfig(model, seed=0, device=str(device), image_size=size))
    import transformers

    config = getattr(transformers, model.removeprefix(HF))(**hf_args)
    with tempfile.TemporaryDirectory(prefix="cafe-bench-hf-") as folder:
        config.save_pretrained(folder)
        return Backbone.load(BackboneConfig(folder, seed=0, device=str(device), family="hf", image_size=size))


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


def run_families(
    out: Path, device: torch.device, quick: bool, harness: Harness, targets: int = 8, only: list[str] | None = None
) -> dict[str, Any]:
    """The towers of every family (or of those in `only`): AttnLRP vs autograd at the last block; written to `out`
    as JSON."""
    towers = QUICK if quick else TOWERS
    unknown = sorted(set(only or ()) - set(towers))
    if unknown:
        raise CafeError(f"bench --towers: unknown {unknown}; known: {sorted(towers)}")
    timer = Timer(harness, device, warmup=1, pairs=1 if quick else None)
    results: dict[str, Any] = {"admission": harness.admit()}
    for family, (model, size, hf_args) in towers.items():
        if only is None or family in only:
            backbone = load_family_tower(model, size, hf_args, device)
            config = {"config": hf_args} if hf_args else {}
            results[family] = {"model": model, **config, **family_ratio(backbone, timer, targets, backbone.depth)}
    write_json(out, results)
    return results
