"""Train the demo tower: an OpenCLIP VisionTransformer classifying the demo scenes, saved as an ordinary
OpenCLIP checkpoint so the pipeline loads it exactly like a user's own (`backbone.pretrained: <path>`).

The classifier is a linear head on the tower's pooled, projected image embedding (CLS token). The checkpoint
is `{"state_dict": <the whole CLIP model>, "head": {"weight", "bias"}, "classes", "metrics", "config"}`;
OpenCLIP reads only `state_dict`. Images are read as [0, 1] pixels and go through `Backbone.normalize`, as in
every later step. Training runs on the CPU, seeded: data order, augmentation and initialisation are fixed.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from cafe.backbone import tower_shape
from cafe.backbone.openclip import library
from cafe.backbone.tower import Backbone
from cafe.config import as_dict, parse_section
from cafe.demo.config import DemoBackboneConfig
from cafe.demo.world import COMPOSITIONAL
from cafe.images import list_images, load_images
from cafe.io import save_torch, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSet:
    """An ImageFolder in memory: pixels in [0, 1] (N, 3, H, W), class index per image, class names."""

    pixels: torch.Tensor
    targets: torch.Tensor
    classes: tuple[str, ...]


@dataclass
class Trained:
    """A trained tower (the whole CLIP model), its head, and what it scored."""

    clip: nn.Module
    head: nn.Linear
    classes: tuple[str, ...]
    metrics: dict


def load_image_folder(root: str | Path, image_size: int) -> ImageSet:
    """Read `<root>/<class>/<image>` with the pipeline's reader and eval transform (`cafe.images`)."""
    listing = list_images(root)
    classes = tuple(sorted(listing["class"].unique()))
    log.info("reading %d images from %s", len(listing), root)
    pixels = load_images(root, listing["path"].tolist(), image_size)
    targets = torch.tensor([classes.index(c) for c in listing["class"]])
    return ImageSet(pixels, targets, classes)


def split_holdout(targets: torch.Tensor, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split stratified by class: (train indices, held-out indices)."""
    gen = torch.Generator().manual_seed(seed)
    held = []
    for c in targets.unique():
        members = torch.nonzero(targets == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        held.append(members[: max(1, round(share * len(members)))])
    mask = torch.zeros(len(targets), dtype=torch.bool)
    mask[torch.cat(held)] = True
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()


def augment(pixels: torch.Tensor, gen: torch.Generator, shift: int) -> torch.Tensor:
    """Random horizontal flips and shifts of up to `shift` px (edges replicated); vertical flips would turn a
    frown into a smile, so there are none."""
    flip = torch.rand(len(pixels), generator=gen) < 0.5
    pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
    padded = nn.functional.pad(pixels, (shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, len(pixels)), generator=gen).tolist()
    size = pixels.shape[-1]
    return torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(dy, dx))])


def _schedule(step: int, total: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warm = max(1, total // 20)
    return (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def logits(backbone: Backbone, head: nn.Linear, pixels: torch.Tensor) -> torch.Tensor:
    """Class scores of [0, 1] pixels: `Backbone.normalize`, the tower, the linear head."""
    return head(backbone.visual(backbone.normalize(pixels)))


@torch.no_grad()
def accuracy(backbone: Backbone, head: nn.Linear, data: ImageSet, index: torch.Tensor, batch: int = 256) -> dict:
    """Overall, per-class and compositional-class accuracy on the images `index`."""
    backbone.visual.eval()
    pred = torch.cat([logits(backbone, head, data.pixels[chunk]).argmax(1) for chunk in index.split(batch)])
    right = pred == data.targets[index]
    per_class = {name: right[data.targets[index] == c].float().mean().item() for c, name in enumerate(data.classes)}
    compositional = right[torch.isin(data.targets[index], _class_ids(data.classes, COMPOSITIONAL))]
    return {
        "accuracy": right.float().mean().item(),
        "per_class": per_class,
        "compositional": compositional.float().mean().item() if len(compositional) else None,
    }


def _class_ids(classes: tuple[str, ...], names: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([i for i, name in enumerate(classes) if name in names], dtype=torch.long)


def _build(model: str, seed: int) -> tuple[nn.Module, Backbone]:
    """The whole CLIP model from OpenCLIP's factory (seeded, as `Backbone.load` does) and a trainable view."""
    torch.manual_seed(seed)
    clip = library(model).create_model(model, pretrained=None, device="cpu")
    pp = library().get_model_preprocess_cfg(clip)
    backbone = Backbone(clip.visual, tuple(pp["mean"]), tuple(pp["std"]), model, f"demo-training-seed{seed}")
    return clip, backbone


def train(model: str, data: ImageSet, config: DemoBackboneConfig) -> Trained:
    """Train tower + linear head with AdamW (warm-up, cosine) on the non-held-out images; report accuracy."""
    clip, backbone = _build(model, config.seed)
    head = nn.Linear(backbone.visual.output_dim, len(data.classes))
    params = list(backbone.visual.parameters()) + list(head.parameters())
    backbone.visual.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    train_idx, held_idx = split_holdout(data.targets, config.holdout, config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, config.epochs * steps_per_epoch))
    losses, start = [], time.perf_counter()
    for epoch in range(config.epochs):
        backbone.visual.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        total = 0.0
        for chunk in tqdm(order.split(config.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False):
            pixels = augment(data.pixels[chunk], gen, shift=backbone.patch_size // 2)
            loss = nn.functional.cross_entropy(logits(backbone, head, pixels), data.targets[chunk])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(chunk)
        losses.append(total / len(train_idx))
        log.info("epoch %d/%d: train loss %.4f", epoch + 1, config.epochs, losses[-1])
    seconds = time.perf_counter() - start
    backbone.visual.requires_grad_(False)
    held = accuracy(backbone, head, data, held_idx)
    metrics = {
        "holdout": held,
        "train_accuracy": accuracy(backbone, head, data, train_idx)["accuracy"],
        "loss": losses,
        "train_seconds": round(seconds, 1),
        "n_train": len(train_idx),
        "n_holdout": len(held_idx),
    }
    log.info("held-out accuracy %.3f (compositional %s) after %.0f s", held["accuracy"], held["compositional"], seconds)
    return Trained(clip, head, data.classes, metrics)


def save(path: str | Path, trained: Trained, model: str, config: DemoBackboneConfig) -> None:
    """Write an ordinary OpenCLIP checkpoint (`state_dict`) carrying the head, classes and metrics too."""
    blob = {
        "state_dict": trained.clip.state_dict(),
        "model": model,
        "config": as_dict(config),
        "head": {k: v.detach() for k, v in trained.head.state_dict().items()},
        "classes": list(trained.classes),
        "metrics": trained.metrics,
    }
    save_torch(path, blob)


def run_train_demo_backbone(args: argparse.Namespace) -> None:
    config = parse_section(DemoBackboneConfig, args.params, "demo.backbone")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_image_folder(args.images, tower_shape(args.model).image_size)
    trained = train(args.model, data, config)
    save(args.out, trained, args.model, config)
    write_json(args.metrics, {"model": args.model, **trained.metrics})


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe train-demo-backbone`."""
    parser = subparsers.add_parser("train-demo-backbone", help="train the demo tower on the demo scenes (CPU)")
    parser.add_argument("--params", default="{}", help="params.yaml `demo.backbone:` section as JSON")
    parser.add_argument("--model", default="cafe-demo-vit", help="OpenCLIP model name (a VisionTransformer)")
    parser.add_argument("--images", type=Path, required=True, help="ImageFolder root of the demo scenes")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (OpenCLIP format)")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write (accuracy, loss)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.set_defaults(func=run_train_demo_backbone)
