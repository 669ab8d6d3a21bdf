"""Reference LRP maps from lxt 2.1 (Achtibat et al.'s library), for tests/test_attnlrp.py.

Run as a subprocess: lxt's efficient mode patches classes process-wide (nn.GELU, nn.MultiheadAttention, OpenCLIP's
LayerNorm, zennit's BasicHook), which cafe must never do in its own process.

    python tests/lxt_reference.py IN.pt OUT.pt

IN holds the model name, the vision tower's state, the SAE's state, layer, normalised pixels, tokens, features
and gamma; OUT gets per-patch maps (B, grid, grid) under three settings:

    attnlrp   lxt.explicit's functional rules (softmax rule, uniform matmul rule, epsilon linear, LayerNorm,
              identity on GELU) on the same weights, relevance read at the patch tokens before the positional
              embedding (lxt has no AttnLRP rule inside nn.MultiheadAttention, so the tower is written with its ops)
    cp        lxt.efficient's ViT recipe on the real OpenCLIP modules: LayerNorm with detached std, identity rule on
              GELU, CP-LRP in nn.MultiheadAttention; gradient x input at the pixels
    cp_gamma  the same plus zennit's Gamma rule on the MLP's nn.Linear layers, through lxt's zennit patch

lxt.efficient's package __init__ imports transformers (for its LLM patch maps); only its rules and patches
modules are used here, so the package is stubbed to load them without transformers.
"""

from __future__ import annotations

import sys

import torch

from cafe.backbone import Backbone, BackboneConfig
from cafe.bench.lxt_worker import gradient_x_input, patch_lxt
from cafe.feature_target import FeatureTarget
from cafe.sae import MatryoshkaSAE


def load_world(blob: dict) -> tuple[Backbone, MatryoshkaSAE]:
    """Rebuild the tower and SAE the test used, from their states."""
    backbone = Backbone.load(BackboneConfig(blob["model"], device="cpu"))
    backbone.visual.load_state_dict(blob["visual"])
    sae = MatryoshkaSAE(*blob["sae_shape"])
    sae.load_state_dict(blob["sae"])
    return backbone, sae.eval().requires_grad_(False)


def explicit_attnlrp(backbone: Backbone, sae: MatryoshkaSAE, blob: dict) -> torch.Tensor:
    """AttnLRP with lxt.explicit's functional rules: relevance is propagated explicitly, starting from R = z."""
    import lxt.explicit.functional as lf
    from lxt.explicit.rules import identity

    visual, pixels = backbone.visual, blob["pixels"]
    rows = torch.arange(len(pixels))
    patches = visual.conv1(pixels).flatten(2).transpose(1, 2).detach().requires_grad_(True)
    cls = visual.class_embedding.expand(len(pixels), 1, -1)
    x = lf.add2(torch.cat([cls, patches], 1), visual.positional_embedding.expand(len(pixels), -1, -1))
    x = lf.layer_norm(x, visual.ln_pre.weight, visual.ln_pre.bias, visual.ln_pre.eps)
    for block in visual.transformer.resblocks[: blob["layer"]]:
        x = lf.add2(x, _explicit_attention(lf, block.attn, _ln(lf, block.ln_1, x)))
        h = lf.linear_epsilon(_ln(lf, block.ln_2, x), block.mlp.c_fc.weight, block.mlp.c_fc.bias)
        h = identity(block.mlp.gelu, h)
        x = lf.add2(x, lf.linear_epsilon(h, block.mlp.c_proj.weight, block.mlp.c_proj.bias))
    pre = lf.linear_epsilon(x[rows, blob["tokens"]], sae.W_e * sae.scale, -(sae.W_e @ sae.b_d))
    z = torch.relu(pre)[rows, blob["features"]]
    z.backward(z.detach())
    grid = backbone.grid
    return patches.grad.sum(-1).view(-1, grid, grid)


def _ln(lf, norm, x):
    return lf.layer_norm(x, norm.weight, norm.bias, norm.eps)


def _explicit_attention(lf, attn, x):
    b, t, d = x.shape
    qkv = lf.linear_epsilon(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, t, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)
    logits = lf.mul2(lf.matmul(q, k.transpose(-1, -2)), q.shape[-1] ** -0.5)
    out = lf.matmul(lf.softmax(logits, -1), v).transpose(1, 2).reshape(b, t, d)
    return lf.linear_epsilon(out, attn.out_proj.weight, attn.out_proj.bias)


def efficient_cp(backbone: Backbone, sae: MatryoshkaSAE, blob: dict) -> dict[str, torch.Tensor]:
    """lxt's efficient ViT recipe (its `cp_LRP` patch map, with OpenCLIP's LayerNorm subclass) and its zennit gamma."""
    from torch import nn

    assert len(patch_lxt()) == 3, "lxt could not patch GELU, LayerNorm and MultiheadAttention"
    target = FeatureTarget(backbone, sae, blob["layer"])
    maps = {"cp": gradient_x_input(target, blob["pixels"], blob["tokens"], blob["features"])}

    import zennit.rules
    from lxt.efficient.zennit_patches import monkey_patch_zennit
    from zennit.composites import LayerMapComposite

    monkey_patch_zennit()
    composite = LayerMapComposite([(nn.Linear, zennit.rules.Gamma(blob["gamma"]))])
    mlps = [block.mlp for block in backbone.visual.transformer.resblocks]
    with composite.context(nn.ModuleList(mlps)):
        maps["cp_gamma"] = gradient_x_input(target, blob["pixels"], blob["tokens"], blob["features"])
    return maps


def main(source: str, dest: str) -> None:
    torch.set_num_threads(2)
    blob = torch.load(source, weights_only=False)
    backbone, sae = load_world(blob)
    maps = {"attnlrp": explicit_attnlrp(backbone, sae, blob)}
    maps.update(efficient_cp(backbone, sae, blob))
    torch.save(maps, dest)


if __name__ == "__main__":
    main(*sys.argv[1:3])
