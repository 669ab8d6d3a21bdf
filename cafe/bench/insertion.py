"""Insertion curves (curves/s): all steps of many curves in batched truncated forwards (`cafe.insertion.curves`),
beside one forward per insertion step."""

from __future__ import annotations

from typing import Any

import numpy as np

from cafe.bench.context import Context, Stage
from cafe.bench.fixtures import random_images, random_targets
from cafe.feature_target import FeatureTarget
from cafe.insertion.canvases import make_canvas
from cafe.insertion.config import InsertionConfig
from cafe.insertion.curves import curves
from cafe.insertion.orders import step_counts


def insertion(ctx: Context) -> dict[str, dict[str, Any]]:
    """Records `insertion` (batched steps) and `insertion.per_step` (one forward per step) on the same curves."""
    p, config = ctx.profile, InsertionConfig()
    layer, n, steps = ctx.layer(p.insertion_layer), p.insertion_curves, p.insertion_steps or config.steps
    backbone = ctx.backbone
    target = FeatureTarget(backbone, ctx.sae, layer)
    images = random_images(n, backbone.image_size, ctx.timer.device)
    canvases = make_canvas("mean", images, backbone, config.blur_sigma)
    rng = np.random.default_rng(0)
    orders = np.stack([rng.permutation(backbone.grid**2) for _ in range(n)])
    counts = step_counts(backbone.grid**2, steps)
    tokens, features = (t.numpy() for t in random_targets(n, backbone, ctx.sae.n_latents))
    flops = n * 2 * steps * ctx.arch.forward(layer)  # 2S images per curve: insertion 0..S, deletion 1..S-1
    params = {"layer": layer, "curves": n, "steps": steps, "images_per_curve": 2 * steps}

    def run(batch_size: int):
        return lambda: curves(target, images, canvases, orders, counts, np.arange(n), tokens, features, batch_size)

    return ctx.compare(
        "insertion",
        Stage(
            f"insertion + deletion curves, {config.batch_size} images per forward",
            "curves",
            n,
            run(config.batch_size),
            flops,
            {**params, "batch_size": config.batch_size},
        ),
        "insertion.per_step",
        Stage("baseline: one forward per insertion step", "curves", n, run(1), flops, {**params, "batch_size": 1}),
    )
