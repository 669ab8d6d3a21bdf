"""What the rule forward of `cafe.erf.lrp` does differently under autocast (compute.precision bf16), where a
profile of AttnLRP on ViT-L/14 showed the bf16 time going to work other than the matmuls:

- weights: autocast casts each linear layer's float32 weight and bias to bf16 at every call, in the forward and
  again in the backward (frozen weights are not in autocast's cache): `CastViews` casts each block's once and
  keeps the copy while the weights stay the same (half the float32 tower's memory);
- attention on a CPU: torch's fused CPU attention kernel has a slow bf16 backward (slower than its float32 one),
  so there `packed_attention` runs softmax(q k^T / sqrt(d)) v on the packed q/k/v projection as batched bf16
  matmuls with the softmax taken in float32 inside its kernel, as an unfused attention under autocast does, with
  the plain gradient times each factor's share of the relevance (the uniform rule, instead of one more pass per
  factor) written straight into the packed projection's layout (no stacking of three gradients, no copy back);
- the patch embedding on a CPU: its float32 backward (a convolution whose stride is its kernel) is several times
  slower in oneDNN than in torch's own kernel, so `native_convolution` turns oneDNN off for that backward alone;
- the MLP's fc1 and activation: the epsilon rule and the identity rule each pass over the hidden activations
  several times; `linear_act_rule` folds both into one factor per element (the same rules);
- casts: each block's LayerNorms hand the matmuls bf16 (`cafe.erf.rules.layer_norm_rule`); the backward widens
  their bf16 gradient in a cast of its own, then multiplies by the norm's weight in float32 (torch's product of a
  bf16 and a float32 tensor takes a mixed-type path 1.5-2x slower than the two passes).

The fp32 path is none of this: its maps stay what they were, bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch.autograd import Function

from cafe.backbone import Backbone
from cafe.blocks import BlockView, Stamp
from cafe.compute import full_precision
from cafe.erf.rules import dtype_epsilon


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast gives matmuls on `device`'s type now, or None when autocast is off."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def low_precision(device: torch.device) -> torch.dtype | None:
    """The dtype of a low-precision autocast (bf16, fp16) on `device`'s type now; None when off or float32."""
    dtype = autocast_dtype(device)
    return None if dtype == torch.float32 else dtype


ATTENTION_WEIGHTS = ("qkv_weight", "qkv_bias", "out_weight", "out_bias")
MLP_WEIGHTS = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


def cast_view(view: BlockView, dtype: torch.dtype) -> BlockView:
    """`view` with its linear layers' weights and biases in `dtype` (LayerNorms and LayerScale stay as they are:
    autocast runs them in float32)."""

    def cast(part, names):
        return replace(part, **{k: None if getattr(part, k) is None else getattr(part, k).to(dtype) for k in names})

    return replace(view, attn=cast(view.attn, ATTENTION_WEIGHTS), mlp=cast(view.mlp, MLP_WEIGHTS))


def _weights(view: BlockView) -> list[torch.Tensor | None]:
    """Every linear weight and bias of a view: a cast copy is stale when one of them changes."""
    return [getattr(view.attn, k) for k in ATTENTION_WEIGHTS] + [getattr(view.mlp, k) for k in MLP_WEIGHTS]


class CastViews:
    """A backbone's block views with the linear weights in autocast's dtype, cast once per block and dtype."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self._cast: dict[tuple[int, torch.dtype], tuple[Stamp, BlockView]] = {}

    def view(self, layer: int, dtype: torch.dtype | None) -> BlockView:
        """Block `layer`'s view, its linear weights in `dtype` (None: the tower's own)."""
        view = self.backbone.view(layer)
        if dtype is None or view.attn.qkv_weight.dtype == dtype:
            return view
        stamp, cached = self._cast.get((layer, dtype), (None, None))
        if stamp is None or not stamp.matches(_weights(view)):
            stamp, cached = Stamp.of(_weights(view)), cast_view(view, dtype)
            self._cast[(layer, dtype)] = (stamp, cached)
        return cached


class _PackedAttention(Function):
    """softmax(q k^T / sqrt(d)) v per head of a packed projection qkv (B, T, 3 D) in q, k, v order, in its dtype by
    batched matmuls, output (B, T, D); the backward is the plain gradient times the shares (q and k, v) of the
    relevance each factor receives (the uniform rule, `Ops.attend_packed`), written straight into qkv's layout.
    The shares (and q's 1/sqrt(d)) ride on the one pass that writes each gradient."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int, shares: tuple[float, float]) -> torch.Tensor:
        b, t, width = qkv.shape
        d = width // 3 // heads
        # each factor contiguous once (b * heads, t, d), not at every matmul; q scaled once
        q, k, v = (x.contiguous().view(b * heads, t, d) for x in qkv.view(b, t, 3, heads, d).permute(2, 0, 3, 1, 4))
        q.mul_(d**-0.5)
        with full_precision(qkv.device):  # inputs already bf16: no casts, softmax kept in their dtype
            p = torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1)
            out = torch.bmm(p, v).view(b, heads, t, d).transpose(1, 2).reshape(b, t, heads * d)
        ctx.save_for_backward(q, k, v, p)
        ctx.shares, ctx.heads = shares, heads
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, k, v, p = ctx.saved_tensors
        (qk_share, v_share), heads, (_, t, d) = ctx.shares, ctx.heads, q.shape
        b = len(q) // heads
        grad = grad.to(q.dtype).view(b, t, heads, d).transpose(1, 2).reshape(b * heads, t, d)  # contiguous once
        packed = grad.new_empty(b, t, 3, heads, d)
        grad_q, grad_k, grad_v = packed.permute(2, 0, 3, 1, 4)
        torch.mul(torch.bmm(p.transpose(1, 2), grad).view(grad_v.shape), v_share, out=grad_v)
        if qk_share == 0:
            packed[:, :, :2].zero_()  # q's and k's gradients, in one pass
        else:  # softmax backward p * (dp - rowsum(dp * p)) in one kernel
            ds = torch._softmax_backward_data(torch.bmm(grad, v.transpose(1, 2)), p, -1, p.dtype)
            torch.mul(torch.bmm(ds, k).view(grad_q.shape), d**-0.5 * qk_share, out=grad_q)
            torch.mul(torch.bmm(ds.transpose(1, 2), q).view(grad_k.shape), qk_share, out=grad_k)
        return packed.view(b, t, -1), None, None


def packed_attention(qkv: torch.Tensor, heads: int, shares: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """Softmax attention of a packed q/k/v projection (B, T, 3 D) -> (B, T, D) as explicit batched matmuls (for bf16
    on a CPU); the gradients reaching q and k, and v, are scaled by `shares` (a share 0: a zero gradient)."""
    return _PackedAttention.apply(qkv, heads, shares)


class _LinearActRule(Function):
    """a = fn(x W^T + b) under the epsilon rule on the linear layer and the identity rule on fn, as one factor per
    element: the backward's gradient at h = x W^T + b is grad * fn(h) / h (identity) * h / (h + eps sign h)
    (epsilon), i.e. grad * fn(h) / (h + eps sign h), computed in the forward in three passes where the two rules
    apart take eight (sign 0 = the sign bit's: h never divides by 0, and fn(0) = 0 gives 0 there)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fn, epsilon: float):
        h = torch.nn.functional.linear(x, weight, bias)
        a = fn(h)
        epsilon = dtype_epsilon(epsilon, h.dtype)
        stabilised = torch.copysign(torch.full((), epsilon, dtype=h.dtype, device=h.device), h).add_(h)
        ctx.save_for_backward(weight, torch.div(a, stabilised, out=stabilised))
        return a

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, factor = ctx.saved_tensors  # its own tensor: the product goes into it
        return factor.mul_(grad) @ weight, None, None, None, None


def linear_act_rule(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fn, epsilon: float):
    """fn(F.linear(x, weight, bias)) with the epsilon rule (epsilon > 0) on the linear layer and the identity rule
    on fn, fused (`Ops.linear_act`: the rule forward's MLP under autocast)."""
    return _LinearActRule.apply(x, weight, bias, fn, epsilon)


@contextlib.contextmanager
def native_convolution(device: torch.device) -> Iterator[None]:
    """oneDNN off for the block under a low-precision autocast on a CPU: there the patch embedding's float32
    backward (a convolution with stride = kernel) is several times faster in torch's own kernel than in oneDNN's.
    fp32 keeps oneDNN's, so its maps stay what they were, bit for bit."""
    if device.type != "cpu" or low_precision(device) is None:
        yield
        return
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled
