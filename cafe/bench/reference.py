"""Yardsticks: a plain autograd forward + backward of the whole tower (what the machine reaches on this very
model), and z_k(I, t) from the truncated forward beside a full-tower forward with a hook capturing layer L."""

from __future__ import annotations

from typing import Any

import torch

from cafe.bench.context import Context, Stage
from cafe.bench.fixtures import random_images, random_targets
from cafe.feature_target import FeatureTarget


def autograd_reference(ctx: Context) -> dict[str, dict[str, Any]]:
    """Record `reference.autograd`: forward through every block and backward to the pixels, plain autograd."""
    n, depth = ctx.profile.reference_images, ctx.backbone.depth
    pixels = ctx.backbone.normalize(random_images(n, ctx.backbone.image_size, ctx.timer.device))

    def step() -> torch.Tensor:
        x = pixels.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(ctx.backbone.forward_to(x, depth).sum(), x)[0]

    return {
        "reference.autograd": ctx.measure(
            f"reference: plain autograd forward + backward of all {depth} blocks",
            "images",
            n,
            step,
            ctx.arch.forward_backward(depth, n),
            {"images": n},
        )
    }


def hooked_value(
    target: FeatureTarget, pixels: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor
) -> torch.Tensor:
    """z as a user would get it without truncation: the whole tower runs, a forward hook keeps block L's output."""
    captured = {}
    block = target.backbone.blocks[target.layer - 1]
    handle = block.register_forward_hook(
        lambda module, args, out: captured.setdefault("resid", out[0] if isinstance(out, tuple) else out)
    )
    try:
        target.backbone.visual(pixels)
    finally:
        handle.remove()
    rows = torch.arange(len(tokens), device=pixels.device)
    return target.encode_at(captured["resid"][rows, tokens.to(pixels.device)], features)


def truncated_vs_hooked(ctx: Context) -> dict[str, dict[str, Any]]:
    """Records `target.truncated` (blocks 1..L) and `target.hooked` (all blocks, hook at L), inference only."""
    p = ctx.profile
    layer, n = ctx.layer(p.target_layer), p.target_images
    target = FeatureTarget(ctx.backbone, ctx.sae, layer)
    pixels = ctx.backbone.normalize(random_images(n, ctx.backbone.image_size, ctx.timer.device))
    tokens, features = random_targets(n, ctx.backbone, ctx.sae.n_latents)
    params = {"layer": layer, "images": n}

    def run(fn):
        def call() -> torch.Tensor:
            with torch.inference_mode():
                return fn(target, pixels, tokens, features)

        return call

    return ctx.compare(
        "target.truncated",
        Stage(
            f"z_k(I, t) at layer {layer}: truncated forward (block {layer} at the target token only)",
            "targets",
            n,
            run(FeatureTarget.__call__),
            ctx.arch.forward(layer, n),
            params,
        ),
        "target.hooked",
        Stage(
            f"baseline: full-tower forward, hook capturing block {layer}",
            "targets",
            n,
            run(hooked_value),
            ctx.arch.forward(ctx.backbone.depth, n),
            params,
        ),
    )
