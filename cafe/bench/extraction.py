"""Activation extraction (images/s): `extract` writing every layer from one truncated pass per batch, beside what a
user would otherwise write, one pass (and one `extract` call) per layer."""

from __future__ import annotations

from typing import Any

from cafe.activations import ActivationsConfig, extract
from cafe.bench.context import Context
from cafe.bench.fixtures import image_folder


def extraction(ctx: Context) -> dict[str, dict[str, Any]]:
    """Records `extraction` and `extraction.per_layer` on the same PNG folder and manifest."""
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
        "extraction": ctx.measure(
            "extract(): PNG decode, one truncated forward for all layers, float16 HDF5 writes",
            "images",
            images,
            lambda: run([layers]),
            ctx.arch.forward(max(layers), images),
            params,
        ),
        "extraction.per_layer": ctx.measure(
            "baseline: one extract() pass per layer (what a per-layer loop costs)",
            "images",
            images,
            lambda: run([[layer] for layer in layers]),
            sum(ctx.arch.forward(layer, images) for layer in layers),
            params,
        ),
    }
