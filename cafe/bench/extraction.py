"""Activation extraction (images/s): `extract` writing every layer from one truncated pass per batch, beside what a
user would otherwise write, one pass (and one `extract` call) per layer. Then the feed beside the forward it must
keep up with: JPEG decode + resize + crop by PIL in the DataLoader (`activations.decode: cpu`) and batched on the
backbone's device (`decode: device`; on a CPU-only machine that is the CPU), each alone, and the truncated forward
alone on images already on the device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cafe.activations.config import ActivationsConfig
from cafe.activations.extract import extract
from cafe.bench.context import Context, Stage
from cafe.bench.fixtures import image_folder, random_images
from cafe.images import image_batches
from cafe.io.manifest import read_manifest


def extraction(ctx: Context) -> dict[str, dict[str, Any]]:
    """Records `extraction` and `extraction.per_layer` on the same PNG folder and manifest, then the feed's and the
    forward's own rates (`extraction.feed.cpu`, `extraction.feed.device`, `extraction.forward`)."""
    n_train, n_analysis = ctx.profile.extract_images
    images = n_train + n_analysis
    manifest, root = image_folder(ctx.workdir / "extraction", n_train, n_analysis, ctx.backbone.image_size)
    layers = list(ctx.profile.extract_layers) or list(range(1, ctx.backbone.depth + 1))
    config = ActivationsConfig()
    out = ctx.workdir / "extraction" / "activations"
    params = {"layers": layers, "train_images": n_train, "analysis_images": n_analysis, "batch_size": config.batch_size}

    def run(groups: list[list[int]]) -> None:
        for group in groups:
            extract(ctx.backbone, manifest, root, group, out, config)

    return {
        **ctx.compare(
            "extraction",
            Stage(
                "extract(): PNG decode, one truncated forward for all layers, float16 HDF5 writes",
                "images",
                images,
                lambda: run([layers]),
                ctx.arch.forward(max(layers), images),
                params,
            ),
            "extraction.per_layer",
            Stage(
                "baseline: one extract() pass per layer (what a per-layer loop costs)",
                "images",
                images,
                lambda: run([[layer] for layer in layers]),
                sum(ctx.arch.forward(layer, images) for layer in layers),
                params,
            ),
        ),
        **feed_and_forward(ctx, layers, config),
    }


def feed_and_forward(ctx: Context, layers: list[int], config: ActivationsConfig) -> dict[str, dict[str, Any]]:
    """Images/s of each feed (no forward) and of the forward (no feed), on the same number of images."""
    n_train, n_analysis = ctx.profile.extract_images
    n, size, device = n_train + n_analysis, ctx.backbone.image_size, ctx.backbone.device
    manifest, root = image_folder(ctx.workdir / "feed", n_train, n_analysis, size, jpeg=True)
    rows = read_manifest(manifest)  # both splits
    params = {"images": n, "image_size": size, "batch_size": config.batch_size, "num_workers": config.num_workers}

    def feed(decode_on: torch.device | None) -> Callable[[], None]:
        def run() -> None:
            pin = device.type == "cuda" and decode_on is None
            for _, images in image_batches(root, rows, size, config.batch_size, config.num_workers, pin, decode_on):
                images.to(device, non_blocking=True)

        return run

    pixels = random_images(n, size, device).split(config.batch_size)

    def forward() -> None:
        with torch.inference_mode():
            for batch in pixels:
                ctx.backbone.forward_layers(ctx.backbone.normalize(batch), layers)

    workers = f"{config.num_workers} workers" if config.num_workers else "in the main process"
    return {
        "extraction.feed.cpu": ctx.measure(
            f"feed alone: photo-like JPEGs, PIL decode + resize + crop ({workers}), batches to {device}",
            "images",
            n,
            feed(None),
            0.0,
            {**params, "decode": "cpu"},
        ),
        "extraction.feed.device": ctx.measure(
            f"feed alone: file bytes read ({workers}), batched decode_jpeg + resize + crop on {device}",
            "images",
            n,
            feed(device),
            0.0,
            {**params, "decode": "device"},
        ),
        "extraction.forward": ctx.measure(
            "forward alone: one truncated forward for all layers, images already on the device",
            "images",
            n,
            forward,
            ctx.arch.forward(max(layers), n),
            {**params, "layers": layers},
        ),
    }
