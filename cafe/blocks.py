"""OpenCLIP's standard transformer block read part by part: what code outside the block's own forward (AttnLRP's
rules, the one-token last block of a scalar target) may rely on, and that last block itself.

A target z_k(I, t) reads the residual stream after block L at token t only. Block L's output at t needs the
keys and values of every token but the query, attention row, MLP and LayerNorms of token t alone, so running
block L for that one token costs ~15 % of a full block (the K/V projections), exact up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn


def is_standard_block(block: nn.Module) -> bool:
    """A pre-norm ResidualAttentionBlock with batch-first, packed-projection self-attention and no extra K/V bias."""
    attn = getattr(block, "attn", None)
    return (
        isinstance(block, ResidualAttentionBlock)
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.in_proj_bias is not None
        and attn.bias_k is None
    )


def block_at_tokens(block: nn.Module, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The block's output (B, D) at token tokens[b] of row b, for input x (B, T, D); any block that is not
    standard runs in full and is read at the tokens."""
    rows = torch.arange(x.shape[0], device=x.device)
    if not is_standard_block(block):
        return block(x)[rows, tokens]
    attn, (b, t, d) = block.attn, x.shape
    heads = attn.num_heads
    y = block.ln_1(x)
    w_q, w_kv = attn.in_proj_weight.split([d, 2 * d])
    b_q, b_kv = attn.in_proj_bias.split([d, 2 * d])
    q = F.linear(y[rows, tokens], w_q, b_q).view(b, heads, 1, d // heads)
    k, v = F.linear(y, w_kv, b_kv).view(b, t, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v).reshape(b, d)
    h = x[rows, tokens] + block.ls_1(attn.out_proj(out))
    return h + block.ls_2(block.mlp(block.ln_2(h)))
