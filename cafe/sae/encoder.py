"""The encoder of an SAE trained by another tool (read by cafe/sae/formats/), in one form for every format:

    x = norm(h)                          none | layer_norm: (h - mean) / (std + eps) | unit_norm: h sqrt(d) / ||h||
    pre = W_e (s x - b_d) + b_e          any constant input scaling and centring folded into s and b_d
    z = relu(pre) [pre > theta]          ReLU (theta = 0), JumpReLU or a BatchTopK threshold (theta per latent)
    z = topk(pre)                        TopK: the k largest pre-activations of the token (then ReLU, or not)

It offers what the steps use from cafe's own MatryoshkaSAE (`encode`, `W_e`, `d_in`, `n_latents`, `positions`) and
the three pieces the AttnLRP SAE rule needs (`rule_input`, `row_weights`, `activate_rows`): the per-token norm's
scale is a constant under the rule (the layer-norm rule), so relevance is conserved through it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cafe.errors import CafeError
from cafe.tokens import POSITIONS

NORMS = ("none", "layer_norm", "unit_norm")
ACTIVATIONS = ("relu", "jumprelu", "topk")


class SAEEncoder(nn.Module):
    """z = f(h) of an imported SAE on raw residuals h (..., d_in)."""

    def __init__(
        self,
        W_e: torch.Tensor,
        b_e: torch.Tensor | None = None,
        b_d: torch.Tensor | None = None,
        *,
        scale: float = 1.0,
        norm: str = "none",
        eps: float = 1e-5,
        activation: str = "relu",
        k: int = 0,
        threshold: torch.Tensor | float = 0.0,
        topk_relu: bool = True,
        positions: str = "all",
    ):
        super().__init__()
        _check_choice("norm", norm, NORMS)
        _check_choice("activation", activation, ACTIVATIONS)
        _check_choice("positions", positions, POSITIONS)
        n_latents, d_in = W_e.shape
        if activation == "topk" and not 0 < k <= n_latents:
            raise CafeError(f"SAE import: TopK needs 0 < k <= {n_latents} latents, got k = {k}")
        self.d_in, self.n_latents = d_in, n_latents
        self.norm, self.eps, self.activation, self.k = norm, eps, activation, k
        self.topk_relu, self.positions = topk_relu, positions
        as_param = lambda t: nn.Parameter(t.detach().clone().float(), requires_grad=False)  # noqa: E731
        self.W_e = as_param(W_e)
        self.b_e = as_param(torch.zeros(n_latents) if b_e is None else b_e.reshape(n_latents))
        self.b_d = as_param(torch.zeros(d_in) if b_d is None else b_d.reshape(d_in))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float32).expand(n_latents).clone())

    def settings(self) -> dict[str, Any]:
        """The non-tensor settings, as stored in cafe's checkpoint of the import."""
        keys = ("d_in", "n_latents", "norm", "eps", "activation", "k", "topk_relu", "positions")
        return {key: getattr(self, key) for key in keys}

    @classmethod
    def from_state(cls, settings: dict[str, Any], state: dict[str, torch.Tensor]) -> SAEEncoder:
        """Rebuild from `settings()` (or a checkpoint's meta holding them) and a state dict."""
        keys = ("norm", "eps", "activation", "k", "topk_relu", "positions")
        options = {key: settings[key] for key in keys}
        encoder = cls(torch.zeros(settings["n_latents"], settings["d_in"]), **options)
        encoder.load_state_dict(state)
        return encoder

    def normalize(self, h: torch.Tensor, lrp: bool = False) -> torch.Tensor:
        """The per-token input norm; with `lrp` its scale is a constant (no relevance through the statistics)."""
        if self.norm == "layer_norm":
            centred = h - h.mean(-1, keepdim=True)
            std = centred.std(-1, keepdim=True)
            return centred / ((std.detach() if lrp else std) + self.eps)
        if self.norm == "unit_norm":
            size = h.norm(dim=-1, keepdim=True)
            return h * (math.sqrt(self.d_in) / (size.detach() if lrp else size))
        return h

    def pre_activation(self, x: torch.Tensor, n_first: int | None = None) -> torch.Tensor:
        """W_e (s x - b_d) + b_e of normalised inputs x; only the first `n_first` latents if given."""
        return (x * self.scale - self.b_d) @ self.W_e[:n_first].T + self.b_e[:n_first]

    def encode(self, h: torch.Tensor, n_first: int | None = None) -> torch.Tensor:
        """Latents z (..., n_latents) of raw residuals h; only the first `n_first` latents if given (TopK still
        ranks all of them)."""
        x = self.normalize(h)
        if self.activation == "topk":
            return self._topk(self.pre_activation(x))[..., :n_first]
        return self._jump(self.pre_activation(x, n_first), self.threshold[:n_first])

    def _jump(self, pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre) * (pre > threshold)

    def _topk(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values) if self.topk_relu else values)

    def rule_input(self, h: torch.Tensor) -> torch.Tensor:
        """The input of the affine map under the LRP rules (the norm's scale held constant)."""
        return self.normalize(h, lrp=True)

    def row_weights(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, c) with pre = x . w + c for each row's feature: the affine map the epsilon rule sees."""
        rows = self.W_e[features]
        return rows * self.scale, self.b_e[features] - rows @ self.b_d

    def activate_rows(self, pre: torch.Tensor, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """z of each row's feature from its pre-activation (TopK ranks it among the token's latents)."""
        if self.activation != "topk":
            return self._jump(pre, self.threshold[features])
        full = self.pre_activation(x.detach())  # membership from the same matmul as `encode`: no rounding flips
        kth = full.topk(self.k, dim=-1).values[..., -1]
        kept = torch.where(full.gather(-1, features[..., None])[..., 0] >= kth, pre, torch.zeros_like(pre))
        return torch.relu(kept) if self.topk_relu else kept


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CafeError(f"SAE import: {name} must be one of {choices}, not {value!r}")
