"""What the rule forward of `cafe.erf.lrp` does differently under autocast (compute.precision bf16), where a
profile of AttnLRP on ViT-L/14 showed the bf16 time going to work other than the matmuls:

- weights: autocast casts each linear layer's float32 weight and bias to bf16 at every call, in the forward and
  again in the backward (frozen weights are not in autocast's cache): `CastViews` casts each block's once and
  keeps the copy while the weights stay the same (half the float32 tower's memory);
- attention on a CPU: torch's fused CPU attention kernel has a slow bf16 backward (slower than its float32 one),
  so there `matmul_attention` runs softmax(q k^T / sqrt(d)) v as batched bf16 matmuls with the softmax taken in
  float32 inside its kernel, as an unfused attention under autocast does, with the plain gradient.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.autograd import Function

from cafe.backbone import Backbone
from cafe.blocks import BlockView
from cafe.compute import full_precision


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast gives matmuls on `device`'s type now, or None when autocast is off."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


ATTENTION_WEIGHTS = ("qkv_weight", "qkv_bias", "out_weight", "out_bias")
MLP_WEIGHTS = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


def cast_view(view: BlockView, dtype: torch.dtype) -> BlockView:
    """`view` with its linear layers' weights and biases in `dtype` (LayerNorms and LayerScale stay as they are:
    autocast runs them in float32)."""

    def cast(part, names):
        return replace(part, **{k: None if getattr(part, k) is None else getattr(part, k).to(dtype) for k in names})

    return replace(view, attn=cast(view.attn, ATTENTION_WEIGHTS), mlp=cast(view.mlp, MLP_WEIGHTS))


def _stamp(view: BlockView) -> tuple:
    """Identity and in-place version of every linear weight of a view: a cast copy is stale when this changes."""
    tensors = [getattr(view.attn, k) for k in ATTENTION_WEIGHTS] + [getattr(view.mlp, k) for k in MLP_WEIGHTS]
    return tuple(None if t is None else (t.data_ptr(), t._version) for t in tensors)


class CastViews:
    """A backbone's block views with the linear weights in autocast's dtype, cast once per block and dtype."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self._cast: dict[tuple[int, torch.dtype], tuple[tuple, BlockView]] = {}

    def view(self, layer: int, dtype: torch.dtype | None) -> BlockView:
        """Block `layer`'s view, its linear weights in `dtype` (None: the tower's own)."""
        view = self.backbone.view(layer)
        if dtype is None or view.attn.qkv_weight.dtype == dtype:
            return view
        stamp, cached = self._cast.get((layer, dtype), (None, None))
        if stamp != _stamp(view):
            stamp, cached = _stamp(view), cast_view(view, dtype)
            self._cast[(layer, dtype)] = (stamp, cached)
        return cached


class _MatmulAttention(Function):
    """softmax(q k^T / sqrt(d)) v in q's dtype by batched matmuls; the backward is the plain gradient."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with full_precision(q.device):  # inputs already bf16: no casts, softmax kept in their dtype
            q, k, v = q * q.shape[-1] ** -0.5, k.contiguous(), v.contiguous()  # once, not at every matmul
            p = torch.softmax(q @ k.transpose(-1, -2), -1)
            out = p @ v
        ctx.save_for_backward(q, k, v, p, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, k, v, p, out = ctx.saved_tensors
        grad = grad.to(out.dtype)
        # softmax backward: p * (dp - rowsum(dp * p)), and rowsum(dp * p) = rowsum(grad * out)
        ds = (grad @ v.transpose(-1, -2)).sub_((grad * out).sum(-1, keepdim=True)).mul_(p)
        scale = q.shape[-1] ** -0.5
        return (ds @ k).mul_(scale), ds.transpose(-1, -2) @ q, p.transpose(-1, -2) @ grad


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention (B, heads, T, d) as explicit batched matmuls (for bf16 on a CPU)."""
    return _MatmulAttention.apply(q, k, v)
