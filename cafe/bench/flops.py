"""Matmul FLOPs counted from the architecture (2 FLOPs per multiply-add), so utilisation needs no profiler.

Per image through blocks 1..L of a pre-norm ViT (width D, MLP width H, T tokens, P patches of 3 p^2 values):

    patch embedding   2 P (3 p^2) D
    one block         T (8 D^2 + 4 D H + 4 T D)       = T (24 D^2 + 4 T D) for H = 4 D
    backward          the same for the linear layers (frozen weights: only the input gradient),
                      twice for the two attention matmuls (both factors are activations): T (8 D^2 + 4 D H + 8 T D)

SAE training step per token (encoder m x D, decoder D x m; Matryoshka prefixes add up to one full decode):
forward 4 D m, backward 6 D m (weight gradients of both, the latents' gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

from cafe.backbone.tower import Backbone

FLOP_MODEL = (
    "matmul FLOPs only (2 per multiply-add). Forward per token per block 8D^2 + 4DH + 4TD (= 24D^2 + 4TD "
    "for H = 4D), plus the patch embedding; backward to the input with frozen weights: 8D^2 + 4DH + 8TD "
    "(CP-LRP: 4D^2 + 4DH + 2TD); "
    "SAE training 10Dm per token."
)


@dataclass(frozen=True)
class Architecture:
    """The shape numbers the FLOP counts need."""

    width: int
    mlp_width: int
    n_tokens: int
    n_patches: int
    patch_values: int

    @classmethod
    def of(cls, backbone: Backbone) -> Architecture:
        """Read the shape of a loaded tower."""
        mlp_width = backbone.view(1).mlp.fc2_weight.shape[1]
        return cls(backbone.width, mlp_width, backbone.n_tokens, backbone.grid**2, 3 * backbone.patch_size**2)

    def forward(self, layers: int, images: float = 1) -> float:
        """FLOPs of the embedding and blocks 1..layers for `images` images."""
        d, t = self.width, self.n_tokens
        block = t * (8 * d * d + 4 * d * self.mlp_width + 4 * t * d)
        return images * (2 * self.n_patches * self.patch_values * d + layers * block)

    def forward_backward(self, layers: int, images: float = 1, cp: bool = False) -> float:
        """FLOPs of forward plus backward to the pixels (weights frozen) through blocks 1..layers; `cp`: attention
        weights held constant (CP-LRP), so no backward through Q, K and their projections."""
        d, t = self.width, self.n_tokens
        attention = 4 * d * d + 2 * t * d if cp else 8 * d * d + 8 * t * d
        backward_block = t * (attention + 4 * d * self.mlp_width)
        backward = 2 * self.n_patches * self.patch_values * d + layers * backward_block
        return self.forward(layers, images) + images * backward


def sae_train_flops(width: int, n_latents: int, tokens: float) -> float:
    """FLOPs of SAE training steps over `tokens` tokens (forward 4Dm + backward 6Dm per token)."""
    return 10 * width * n_latents * tokens
