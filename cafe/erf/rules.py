"""LRP rules as autograd functions in the "modified gradient x input" form (Achtibat et al. 2024, AttnLRP):
the forward is the model's own; the backward carries g = R / output, so that input x g is the input's relevance.
One backward pass then yields LRP for a whole batch of targets. Nothing here touches any class or module.

    epsilon / gamma rule   linear layers (and the SAE encoder's affine map)
    (SAE input norms)      an imported SAE's per-token norm: its scale a constant, like the layer-norm rule
    identity rule          element-wise non-linearities (GELU, ReLU): R_in = R_out
    layer-norm rule        the std is a constant (identity rule on 1/std), the centring is linear
    uniform rule           scale the gradient of each factor of a product (the attention matmuls)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function


def dtype_epsilon(epsilon: float, dtype: torch.dtype) -> float:
    """`epsilon`, at least `dtype`'s tiniest normal number: one the dtype does not round to 0 (a float32 scalar would
    round 1e-300 to 0), so epsilon = 0 never gives 0 / 0."""
    return max(epsilon, torch.finfo(dtype).tiny)


def stabilize(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """x + epsilon * sign(x), with sign(0) = +1 and epsilon at least the dtype's tiniest: never a zero denominator."""
    epsilon = dtype_epsilon(epsilon, x.dtype)
    return torch.where(x >= 0, x + epsilon, x - epsilon)


class _ScaleGrad(Function):
    """Identity forward; the backward multiplies the gradient by a constant (the uniform rule)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def epsilon_scale(grad: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
    """grad * y / (y + epsilon sign y), the epsilon rule's modified gradient at a linear layer's output y, as
    grad - grad / (1 + |y| / epsilon): four element-wise passes in the backward and nothing in the forward (0 where
    y = 0, grad where |y| / epsilon overflows), in one new tensor. Element-wise passes, not matmuls, bound the LRP
    overhead: in 16 bits (autocast) it is grad - epsilon grad / (|y| + epsilon), three passes, with epsilon rounded to
    y's dtype first so that y = 0 still gives 0 (to float32's subnormal rounding); float32 keeps the formula its
    maps were made with."""
    epsilon = dtype_epsilon(epsilon, y.dtype)
    if y.dtype.itemsize >= 4:
        scale = y.div(epsilon).abs_().add_(1)
        return torch.addcdiv(grad, grad, scale, value=-1, out=scale)
    epsilon = float(torch.tensor(epsilon, dtype=y.dtype))
    scale = y.abs().add_(epsilon)
    return torch.addcdiv(grad, grad, scale, value=-epsilon, out=scale)


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Give `x` the share `factor` of the relevance arriving at it (0: none, i.e. detach; 1: all, as it is)."""
    if factor == 1:
        return x
    return x.detach() if factor == 0 else _ScaleGrad.apply(x, factor)


class _IdentityRule(Function):
    """y = fn(x) element-wise; relevance passes unchanged, so the gradient is scaled by y / x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        y = fn(x)
        ctx.save_for_backward(torch.nan_to_num_(y / x, nan=0.0))  # 0 / 0 -> 0 (fn(0) = 0 for GELU, ReLU)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ratio,) = ctx.saved_tensors  # its own tensor, of grad's dtype (y's): the product goes into it
        return ratio.mul_(grad), None


def identity_rule(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply an element-wise non-linearity under the identity rule."""
    return _IdentityRule.apply(x, fn)


class _LayerNormRule(Function):
    """LayerNorm whose std is treated as a constant: the backward is that of a linear (centring, scaling) map.
    `dtype`: the output's (None: x's), e.g. the matmuls' bf16 under autocast; the backward runs in x's dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, norm: nn.LayerNorm, dtype: torch.dtype | None) -> torch.Tensor:
        y, _, rstd = torch.native_layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        ctx.save_for_backward(rstd, norm.weight)
        ctx.dtype = x.dtype
        return y if dtype is None else y.to(dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rstd, weight = ctx.saved_tensors
        # one new tensor in x's dtype, then in place; a low-precision grad is widened in a pass of its own first (a
        # product of two dtypes takes torch's slower mixed-type path)
        if weight is not None and grad.dtype == ctx.dtype:
            grad = grad * weight.to(ctx.dtype)
        else:
            grad = grad.to(ctx.dtype, copy=True)
            grad = grad if weight is None else grad.mul_(weight.to(ctx.dtype))
        return grad.sub_(grad.mean(-1, keepdim=True)).mul_(rstd), None, None


def layer_norm_rule(norm: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Apply a LayerNorm (or nn.Identity) with no relevance through its variance; its output in `dtype` (None:
    x's)."""
    if isinstance(norm, nn.Identity):
        return x if dtype is None else x.to(dtype)
    return _LayerNormRule.apply(x, norm, dtype)


class _LinearRule(Function):
    """y = x W^T + b under the epsilon rule (gamma = 0) or the generalised gamma rule of zennit's `Gamma`.

    epsilon: s = R / (y + eps sign y), R_x = x * (W^T s).
    gamma:   the denominator is y + gamma * (the same-sign contributions, bias included), and the same-sign
             weights (W+ for x > 0 and y > 0, ...) get the extra gamma share in the backward.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, epsilon: float, gamma: float):
        y = F.linear(x, weight, bias)
        ctx.epsilon, ctx.gamma = epsilon, gamma
        if gamma == 0:
            ctx.save_for_backward(weight, y)
        else:
            ctx.save_for_backward(weight, x, bias, y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.gamma == 0:
            weight, y = ctx.saved_tensors
            return epsilon_scale(grad, y, ctx.epsilon) @ weight, None, None, None, None
        weight, x, bias, y = ctx.saved_tensors
        return _gamma_backward(grad, weight, x, bias, y, ctx.epsilon, ctx.gamma), None, None, None, None


def _gamma_backward(grad, weight, x, bias, y, epsilon: float, gamma: float) -> torch.Tensor:
    """Modified gradient at x under the generalised gamma rule (signed inputs and outputs)."""
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    b_pos = None if bias is None else bias.clamp(min=0)
    b_neg = None if bias is None else bias.clamp(max=0)
    up = y > 0
    same_sign = torch.where(
        up,
        F.linear(x_pos, w_pos, b_pos) + F.linear(x_neg, w_neg),
        F.linear(x_pos, w_neg, b_neg) + F.linear(x_neg, w_pos),
    )
    s = grad * y / stabilize(y + gamma * same_sign, epsilon)
    s_up, s_down = torch.where(up, s, 0), torch.where(up, 0, s)
    extra = torch.where(x > 0, s_up @ w_pos + s_down @ w_neg, s_up @ w_neg + s_down @ w_pos)
    return s @ weight + gamma * extra


def linear_rule(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, epsilon: float, gamma: float = 0.0
) -> torch.Tensor:
    """F.linear under the epsilon (gamma = 0) or gamma rule; the bias absorbs its share of relevance. With
    epsilon = gamma = 0 (LRP-0) the modified gradient is the plain gradient: no rule, no extra memory pass."""
    if epsilon == 0 and gamma == 0:
        return F.linear(x, weight, bias)
    return _LinearRule.apply(x, weight, bias, epsilon, gamma)


class _SaeRule(Function):
    """z_k = act(w_k . x + c_k) per row: identity rule on act, epsilon rule on the affine map (the SAE's own
    `row_weights`; its bias c_k absorbs its share)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sae: nn.Module, features: torch.Tensor, epsilon: float) -> torch.Tensor:
        weight, offset = sae.row_weights(features)  # only each row's own feature
        pre = (x * weight).sum(-1) + offset
        z = sae.activate_rows(pre, x, features)
        ctx.save_for_backward(weight, z / stabilize(pre, epsilon))
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, ratio = ctx.saved_tensors
        return (grad * ratio)[:, None] * weight, None, None, None


def sae_rule(h: torch.Tensor, sae: nn.Module, features: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Feature features[b] of the SAE at residual h[b] (B, D) -> (B,), with LRP rules in the backward (through the
    SAE's per-token input norm, if any, by the layer-norm rule)."""
    return _SaeRule.apply(sae.rule_input(h), sae, features, epsilon)
