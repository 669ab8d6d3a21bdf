"""The scalar every ERF and insertion curve is about: z_k(I, t), feature k of the layer-L SAE at token t of
image I, as a differentiable function of the normalised pixels. Only blocks 1..L run.
"""

from __future__ import annotations

import torch

from cafe.backbone import Backbone


class FeatureTarget:
    """Batched targets: row b of a batch is image b, token tokens[b], feature features[b]."""

    def __init__(self, backbone: Backbone, sae: torch.nn.Module, layer: int):
        backbone.check_layer(layer)
        self.backbone, self.sae, self.layer = backbone, sae, layer

    def residual(self, pixels: torch.Tensor) -> torch.Tensor:
        """Residual stream after block L, (B, T, D)."""
        return self.backbone.forward_to(pixels, self.layer)

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """All SAE latents at all tokens, (B, T, m): the activation maps."""
        return self.sae.encode(self.residual(pixels))

    def from_residual(self, resid: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """z for each row, encoding only the target token of each row."""
        rows = torch.arange(resid.shape[0], device=resid.device)
        z = self.sae.encode(resid[rows, tokens.to(resid.device)])
        return z[rows, features.to(resid.device)]

    def __call__(self, pixels: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """z_{features[b]}(pixels[b], tokens[b]) for every row b, shape (B,)."""
        return self.from_residual(self.residual(pixels), tokens, features)
