"""A pre-norm ViT block read part by part (`BlockView`), the one view every backbone family gives of its blocks,
and one forward over it whose operations are pluggable (`Ops`): the plain ones here, AttnLRP's rules in
`cafe.erf.lrp`. The family's own block module stays what normal forwards run; the view is what code outside it
(AttnLRP, the one-token last block of a scalar target) may rely on.

A target z_k(I, t) reads the residual stream after block L at token t only. Block L's output at t needs the
keys and values of every token but the query, attention row, MLP and LayerNorms of token t alone, so running
block L for that one token costs ~15 % of a full block (the K/V projections), exact up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Act = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Stamp:
    """What a tensor derived from weights (a cast, a packed q/k/v) was made from: each source's storage, pinned by a
    detached alias (so no new tensor can take its address), dtype, device and in-place version. The derived tensor
    is current while `matches` holds."""

    aliases: tuple[torch.Tensor | None, ...]
    versions: tuple[int | None, ...]

    @classmethod
    def of(cls, tensors: list[torch.Tensor | None]) -> Stamp:
        return cls(
            tuple(None if t is None else t.detach() for t in tensors),
            tuple(None if t is None else t._version for t in tensors),
        )

    def matches(self, tensors: list[torch.Tensor | None]) -> bool:
        """The same tensors, unchanged since the stamp (None where the stamp had None)."""
        return len(tensors) == len(self.aliases) and all(
            (a is None and t is None)
            or (
                a is not None
                and t is not None
                and a.data_ptr() == t.data_ptr()
                and a.dtype == t.dtype
                and a.device == t.device
                and n == t._version
            )
            for a, n, t in zip(self.aliases, self.versions, tensors)
        )


@dataclass(frozen=True)
class AttentionView:
    """Softmax self-attention: packed projections (3D, D) in q, k, v order, `heads` heads, out projection."""

    heads: int
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    out_weight: torch.Tensor
    out_bias: torch.Tensor | None


@dataclass(frozen=True)
class MlpView:
    """fc1, an element-wise activation, fc2; `gated` (SwiGLU): fc1 gives [a, b] and the hidden is act(a) * b."""

    fc1_weight: torch.Tensor
    fc1_bias: torch.Tensor | None
    act: Act
    fc2_weight: torch.Tensor
    fc2_bias: torch.Tensor | None
    gated: bool = False


@dataclass(frozen=True)
class BlockView:
    """x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x)); ls None = no LayerScale."""

    norm1: nn.Module
    attn: AttentionView
    ls1: torch.Tensor | None
    norm2: nn.Module
    mlp: MlpView
    ls2: torch.Tensor | None


def _plain_scale(x: torch.Tensor, _share: float) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class Ops:
    """The operations a view's forward uses; each rule set swaps in its own with the same forward values.
    `norm(module, x)`, `linear(x, w, b, kind)` with kind 'attention' or 'mlp', `act(fn, x)`, `share(x, s)`:
    the share s in [0, 1] of the relevance that a factor of a product receives (identity in a plain forward),
    `attend_packed(qkv, heads)` softmax attention of the packed q/k/v projection (B, T, 3 D) -> (B, T, D) with the
    shares applied inside (None: SDPA over the heads, `share` on each factor), `linear_act(x, w, b, fn)` an ungated
    MLP's fc1 and its activation as one operation (None: `linear`, `act`)."""

    norm: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda module, x: module(x)
    linear: Callable[..., torch.Tensor] = lambda x, w, b, _kind: F.linear(x, w, b)
    act: Callable[[Act, torch.Tensor], torch.Tensor] = lambda fn, x: fn(x)
    share: Callable[[torch.Tensor, float], torch.Tensor] = _plain_scale
    attention_shares: tuple[float, float] = (1.0, 1.0)  # (q and k, v)
    attend_packed: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    linear_act: Callable[..., torch.Tensor] | None = None


PLAIN = Ops()


def _scaled(ls: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """LayerScale: a diagonal linear map, so plain autograd is already its (conservative) LRP rule."""
    return x if ls is None else x * ls


def attention(view: AttentionView, x: torch.Tensor, ops: Ops, query_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head self-attention of x (B, T, D); with `query_rows` (B,) only those tokens' outputs (B, D)."""
    if query_rows is None and ops.attend_packed is not None:
        out = ops.attend_packed(ops.linear(x, view.qkv_weight, view.qkv_bias, "attention"), view.heads)
        return ops.linear(out, view.out_weight, view.out_bias, "attention")
    b, t, d = x.shape
    heads = view.heads
    if query_rows is None:  # one packed projection
        qkv = ops.linear(x, view.qkv_weight, view.qkv_bias, "attention")
        q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    else:
        w_q, w_kv = view.qkv_weight.split([d, 2 * d])
        b_q, b_kv = (None, None) if view.qkv_bias is None else view.qkv_bias.split([d, 2 * d])
        x_q = x[torch.arange(b, device=x.device), query_rows][:, None]
        q = ops.linear(x_q, w_q, b_q, "attention").view(b, 1, heads, d // heads).transpose(1, 2)
        k, v = ops.linear(x, w_kv, b_kv, "attention").view(b, t, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
    qk_share, v_share = ops.attention_shares
    q, k, v = ops.share(q, qk_share), ops.share(k, qk_share), ops.share(v, v_share)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, d)
    out = ops.linear(out, view.out_weight, view.out_bias, "attention")
    return out if query_rows is None else out[:, 0]


def mlp(view: MlpView, x: torch.Tensor, ops: Ops) -> torch.Tensor:
    """fc1, activation (gated for SwiGLU: each factor of act(a) * b gets half the relevance), fc2."""
    if ops.linear_act is not None and not view.gated:
        h = ops.linear_act(x, view.fc1_weight, view.fc1_bias, view.act)
        return ops.linear(h, view.fc2_weight, view.fc2_bias, "mlp")
    h = ops.linear(x, view.fc1_weight, view.fc1_bias, "mlp")
    if view.gated:
        a, gate = h.chunk(2, dim=-1)
        h = ops.share(ops.act(view.act, a), 0.5) * ops.share(gate, 0.5)
    else:
        h = ops.act(view.act, h)
    return ops.linear(h, view.fc2_weight, view.fc2_bias, "mlp")


def block_forward(view: BlockView, x: torch.Tensor, ops: Ops = PLAIN) -> torch.Tensor:
    """One pre-norm block over the view; residual sums are plain autograd (they conserve relevance as they are)."""
    x = x + _scaled(view.ls1, attention(view.attn, ops.norm(view.norm1, x), ops))
    return x + _scaled(view.ls2, mlp(view.mlp, ops.norm(view.norm2, x), ops))


def block_at_tokens(view: BlockView, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The block's output (B, D) at token tokens[b] of row b, for input x (B, T, D): keys and values of every
    token, everything else for that token only."""
    rows = torch.arange(x.shape[0], device=x.device)
    h = x[rows, tokens] + _scaled(view.ls1, attention(view.attn, view.norm1(x), PLAIN, tokens))
    return h + _scaled(view.ls2, mlp(view.mlp, view.norm2(h), PLAIN))
