"""A forward through an OpenCLIP vision tower's own parameters (embedding, blocks 1..L) with LRP rules in the
backward. It reads the modules' weights and calls nothing that is patched: every other forward in the process,
this tower's included, stays the normal one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from cafe.blocks import is_standard_block
from cafe.compute import full_precision
from cafe.erf.config import AttnLRPConfig
from cafe.erf.rules import identity_rule, layer_norm_rule, linear_rule, scale_grad
from cafe.errors import CafeError

# Share of an attention output's relevance that each factor receives (uniform rule over the two matmuls):
# attnlrp: A V splits 1/2 : 1/2, and A's half goes through the softmax (its gradient is the softmax rule) into
# Q K^T, which splits it again; cp: A is a constant, so the values get everything.
ATTENTION_SHARES = {"attnlrp": {"qk": 0.25, "v": 0.5}, "cp": {"qk": 0.0, "v": 1.0}}


def check_supported(visual: nn.Module) -> None:
    """The rules below cover OpenCLIP's standard VisionTransformer; anything else is refused by name."""
    if getattr(visual.conv1, "bias", None) is not None:
        raise CafeError("erf attnlrp: the patch embedding has a bias; relevance could not be read at the pixels")
    for i, block in enumerate(visual.transformer.resblocks, start=1):
        if not is_standard_block(block):
            raise CafeError(
                f"erf attnlrp: block {i} ({type(block).__name__}) is not a standard OpenCLIP "
                f"ResidualAttentionBlock with batch-first nn.MultiheadAttention; no LRP rules for it"
            )


def embed(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Patch embedding (linear, no bias), CLS and positional embeddings, ln_pre: tokens entering block 1, in float32
    under any autocast (the residual stream and the relevance reaching the pixels stay float32; cafe.compute)."""
    with full_precision(pixels.device):
        x = visual.conv1(pixels.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return layer_norm_rule(visual.ln_pre, x)


def attention(attn: nn.MultiheadAttention, x: torch.Tensor, config: AttnLRPConfig) -> torch.Tensor:
    """Multi-head self-attention: fused softmax attention, the rules sit on the projections and on Q, K, V."""
    b, t, d = x.shape
    heads, gamma = attn.num_heads, config.gamma.attention
    qkv = linear_rule(x, attn.in_proj_weight, attn.in_proj_bias, config.epsilon, gamma)
    q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    shares = ATTENTION_SHARES[config.attention]
    q, k, v = scale_grad(q, shares["qk"]), scale_grad(k, shares["qk"]), scale_grad(v, shares["v"])
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
    return linear_rule(out, attn.out_proj.weight, attn.out_proj.bias, config.epsilon, gamma)


def mlp(block_mlp: nn.Module, x: torch.Tensor, config: AttnLRPConfig) -> torch.Tensor:
    """c_fc (rule), activation (identity rule), c_proj (rule)."""
    gamma = config.gamma.mlp
    h = linear_rule(x, block_mlp.c_fc.weight, block_mlp.c_fc.bias, config.epsilon, gamma)
    h = identity_rule(block_mlp.gelu, h)
    return linear_rule(h, block_mlp.c_proj.weight, block_mlp.c_proj.bias, config.epsilon, gamma)


def block_forward(block: ResidualAttentionBlock, x: torch.Tensor, config: AttnLRPConfig) -> torch.Tensor:
    """One pre-norm block; residual sums and LayerScale are plain autograd (they conserve relevance as they are)."""
    x = x + block.ls_1(attention(block.attn, layer_norm_rule(block.ln_1, x), config))
    return x + block.ls_2(mlp(block.mlp, layer_norm_rule(block.ln_2, x), config))


def residual_with_rules(visual: nn.Module, pixels: torch.Tensor, layer: int, config: AttnLRPConfig) -> torch.Tensor:
    """Residual stream after block `layer` (B, T, D), running only blocks 1..layer, with LRP rules in the backward."""
    x = embed(visual, pixels)
    for block in visual.transformer.resblocks[:layer]:
        x = block_forward(block, x, config)
    return x
