"""Test helper: a hand-built ViT whose SAE feature fires at token t because attention routes t to patch p.

The tower is cafe-tiny-vit (32x32 images, 8x8 patches, 4x4 grid, width 32, 4 heads of 8) with weights set by hand:

    conv1      channel 0/1 = +/- the patch's mean normalised pixel (its "content"; the mean canvas has none)
    pos. emb.  every patch token carries a background marker (channels 2/3), token t a query marker (4/5)
    block 1    head 0: query reads the query marker, key reads content -> t attends to p and only p; the value
               carries p's content, out_proj writes it to channels 6/7 of t; MLP is zero
    block 2    out_proj and c_proj are zero, so the residual passes unchanged (layer = 2)
    SAE        feature 0 reads channels 6 - 7

With one bright patch at p on the mean canvas, z_0 peaks at t (about 7; about 0.4 elsewhere), and z_0(I, t)
depends on p's pixels alone: every attribution method should put its peak at p, the activation baseline at t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cafe.backbone import Backbone, BackboneConfig
from cafe.sae import MatryoshkaSAE

CONTENT, BACKGROUND, QUERY, ROUTED = 0, 2, 4, 6  # each a (+, -) channel pair: c, c + 1
ALPHA = 2.0  # query/key gain: score(t, p) is about 14, so softmax puts ~all of t's attention on p


@dataclass(frozen=True)
class Planted:
    """The world: z_{feature}(images, token) of `sae` at `layer` is driven by the patch token `source`."""

    backbone: Backbone
    sae: MatryoshkaSAE
    layer: int
    feature: int
    token: int  # t, where the feature fires (token index: 0 = CLS, 1.. patches row-major)
    source: int  # p, the patch token that drives it
    images: torch.Tensor  # (1, 3, 32, 32) in [0, 1]: mean canvas, white patch at p


def _pair(vector: torch.Tensor, channel: int, value: float) -> None:
    vector[..., channel], vector[..., channel + 1] = value, -value


@torch.no_grad()
def _set_tower(visual: torch.nn.Module, token: int) -> None:
    for p in visual.parameters():
        p.zero_()
    visual.conv1.weight[CONTENT] = 1.0 / visual.conv1.weight[0].numel()
    visual.conv1.weight[CONTENT + 1] = -visual.conv1.weight[CONTENT]
    _pair(visual.positional_embedding[1:], BACKGROUND, 1.0)
    _pair(visual.positional_embedding[token], QUERY, 1.0)
    for norm in [visual.ln_pre] + [m for b in visual.transformer.resblocks for m in (b.ln_1, b.ln_2)]:
        norm.weight.fill_(1.0)
    attn, width = visual.transformer.resblocks[0].attn, visual.transformer.width
    attn.in_proj_weight[0, QUERY] = ALPHA  # head 0, query dim 0
    attn.in_proj_weight[width, CONTENT] = ALPHA  # head 0, key dim 0
    attn.in_proj_weight[2 * width + 1, CONTENT] = 1.0  # head 0, value dim 1
    attn.out_proj.weight[ROUTED, 1], attn.out_proj.weight[ROUTED + 1, 1] = 1.0, -1.0


def planted_world(token: int = 6, source: int = 16) -> Planted:
    """Build the hand-set tower, SAE and image for a feature at `token` driven by patch token `source`."""
    backbone = Backbone.load(BackboneConfig("cafe-tiny-vit", seed=0, device="cpu"))
    _set_tower(backbone.visual, token)
    sae = MatryoshkaSAE(backbone.width, 8)
    with torch.no_grad():
        sae.W_e.zero_()
        _pair(sae.W_e[0], ROUTED, 1.0)
    images = backbone.mean.view(1, 3, 1, 1).expand(1, 3, 32, 32).clone()
    row, col = divmod(source - 1, backbone.grid)
    patch = backbone.patch_size
    images[:, :, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = 1.0
    return Planted(backbone, sae.eval().requires_grad_(False), 2, 0, token, source, images)
