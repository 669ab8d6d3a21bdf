"""A forward through a vision tower's own parameters (embedding, blocks 1..L) with LRP rules in the backward, for
every backbone family: the family gives its embedding (with a hook for the pre-norm) and each block as a
`cafe.blocks.BlockView`, and the one view forward of `cafe.blocks` runs with the rule operations below. It reads
the modules' weights and patches nothing: every other forward in the process, this tower's included, stays the
normal one.

Rules per part (the same for OpenCLIP, timm and Hugging Face towers, since the views are the same):
LayerNorms (ln_pre / norm_pre / pre_layrnorm and each block's two) the layer-norm rule; q/k/v and out projections,
fc1/fc2 the epsilon (or gamma) rule; GELU / QuickGELU / tanh-GELU / SiLU the identity rule; softmax attention
fused (SDPA) with the uniform rule on its two products; SwiGLU's gate product split half and half; LayerScale,
residual sums, CLS / register / positional embeddings plain autograd (linear or additive: conservative as is).
"""

from __future__ import annotations

import functools

import torch

from cafe.backbone.tower import Backbone
from cafe.blocks import Ops, block_forward
from cafe.compute import full_precision
from cafe.erf.config import AttnLRPConfig
from cafe.erf.mixed_precision import (
    CastViews,
    autocast_dtype,
    linear_act_rule,
    low_precision,
    native_convolution,
    packed_attention,
)
from cafe.erf.rules import identity_rule, layer_norm_rule, linear_rule, scale_grad

# Share of an attention output's relevance that each factor receives (uniform rule over the two matmuls):
# attnlrp: A V splits 1/2 : 1/2, and A's half goes through the softmax (its gradient is the softmax rule) into
# Q K^T, which splits it again; cp: A is a constant, so the values get everything.
ATTENTION_SHARES = {"attnlrp": (0.25, 0.5), "cp": (0.0, 1.0)}


def _linear(config: AttnLRPConfig, x, weight, bias, kind: str) -> torch.Tensor:
    gamma = config.gamma.attention if kind == "attention" else config.gamma.mlp
    return linear_rule(x, weight, bias, config.epsilon, gamma)


def rule_ops(config: AttnLRPConfig, device: torch.device) -> Ops:
    """The view forward's operations under the AttnLRP rules of `config`. Under a low-precision autocast the
    LayerNorms hand the matmuls their dtype, fc1 and its activation run as one rule (epsilon > 0, gamma 0), and on a
    CPU attention runs as bf16 matmuls with the shares in its backward (`cafe.erf.mixed_precision`)."""
    low = low_precision(device)
    shares = ATTENTION_SHARES[config.attention]
    packed = device.type == "cpu" and low is not None
    fused = low is not None and config.epsilon > 0 and config.gamma.mlp == 0
    return Ops(
        norm=functools.partial(layer_norm_rule, dtype=low),
        linear=functools.partial(_linear, config),
        act=identity_rule,
        share=scale_grad,
        attention_shares=shares,
        attend_packed=functools.partial(packed_attention, shares=shares) if packed else None,
        linear_act=functools.partial(linear_act_rule, epsilon=config.epsilon) if fused else None,
    )


def check_supported(backbone: Backbone) -> None:
    """Every block must have a view (a CafeError names the first that has none)."""
    for layer in range(1, backbone.depth + 1):
        backbone.view(layer)


def embed(backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
    """Tokens entering block 1 with the layer-norm rule on the pre-norm, in float32 under any autocast (the
    residual stream and the relevance reaching the pixels stay float32; cafe.compute)."""
    with full_precision(pixels.device):
        return backbone.family.embed(backbone.visual, pixels, layer_norm_rule)


def residual_with_rules(views: CastViews, tokens: torch.Tensor, layer: int, config: AttnLRPConfig) -> torch.Tensor:
    """Residual stream after block `layer` (B, T, D) from the tokens entering block 1 (`embed`), running only blocks
    1..layer, with LRP rules in the backward; under autocast the blocks' linear weights come cast once (`views`)."""
    ops, x, dtype = rule_ops(config, tokens.device), tokens, autocast_dtype(tokens.device)
    for i in range(1, layer + 1):
        x = block_forward(views.view(i, dtype), x, ops)
    return x


def pixel_gradient(z: torch.Tensor, tokens: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """d sum(z) / d pixels, in two steps: down to the embedded `tokens`, then through the patch embedding (with
    torch's own convolution backward under a CPU autocast: `native_convolution`). The same gradient, bit for bit,
    as one autograd call."""
    (grad,) = torch.autograd.grad(z.sum(), tokens)
    with native_convolution(pixels.device):
        return torch.autograd.grad(tokens, pixels, grad)[0]
