"""The scalar every ERF and insertion curve is about: z_k(I, t), feature k of the layer-L SAE at token t of
image I, as a differentiable function of the normalised pixels. Only blocks 1..L run.
"""

from __future__ import annotations

import torch

from cafe.backbone.tower import Backbone
from cafe.compute import full_precision


class FeatureTarget:
    """Batched targets: row b of a batch is image b, token tokens[b], feature features[b]."""

    def __init__(self, backbone: Backbone, sae: torch.nn.Module, layer: int):
        backbone.check_layer(layer)
        self.backbone, self.sae, self.layer = backbone, sae, layer

    def residual(self, pixels: torch.Tensor) -> torch.Tensor:
        """Residual stream after block L, (B, T, D)."""
        return self.backbone.forward_to(pixels, self.layer)

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """All SAE latents at all tokens, (B, T, m): the activation maps (the SAE in its own dtype, autocast off),
        zero at tokens the SAE was not trained on (`TokenLayout.mask`)."""
        resid = self.residual(pixels)
        trained = torch.tensor(self.backbone.layout.mask(self.sae.positions), device=resid.device)
        with full_precision(resid.device):
            return self.sae.encode(resid.to(self.sae.W_e.dtype)) * trained[:, None]

    def encode_at(self, resid: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """z of each row's feature from its target token's residual (B, D)."""
        rows = torch.arange(resid.shape[0], device=resid.device)
        with full_precision(resid.device):  # one token per row: full precision costs nothing
            z = self.sae.encode(resid.to(self.sae.W_e.dtype))
        return z[rows, features.to(resid.device)]

    def at_tokens(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Residual after block L at each row's target token, (B, D); block L runs for that token only."""
        return self.backbone.forward_at(pixels, self.layer, tokens)

    def from_embedding(self, embedded: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """z of every row from the token sequence entering block 1 (Backbone.embed's output, (B, T, D)), as
        `__call__` computes it from pixels: blocks 1..L-1 in full, block L at the target token only."""
        return self.from_hidden(self.before_layer(embedded), tokens, features)

    def before_layer(self, embedded: torch.Tensor) -> torch.Tensor:
        """The residual stream entering block L (blocks 1..L-1 on `Backbone.embed`'s output), (B, T, D): what
        targets of the same image share."""
        return self.backbone.run_blocks(embedded, 0, self.layer - 1)

    def from_hidden(self, hidden: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """z of every row from `before_layer`'s output: block L at the target token only, then the SAE."""
        return self.encode_at(self.backbone.last_block_at(hidden, self.layer, tokens), features)

    def __call__(self, pixels: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """z_{features[b]}(pixels[b], tokens[b]) for every row b, shape (B,)."""
        return self.encode_at(self.at_tokens(pixels, tokens), features)
