"""AttnLRP (Achtibat et al., ICML 2024) for z_k(I, t): one forward and one backward through blocks 1..L for a
whole batch of targets, with the LRP rules of `cafe.erf.rules` on the tower's own parameters.

Relevance is read at the normalised pixels (pixels x modified gradient, summed over each patch). The patch
embedding is linear and its patches do not overlap, so this is exactly the relevance of each patch token before
the positional embedding is added, less its bias's share where it has one (timm's and HF's DINOv2 and SigLIP):
any conservative rule on it would give the same per-patch sum. `absorbed` = z - sum of the map: what the rules
give to biases (linear layers and the patch embedding, LayerNorm shifts, the SAE's b_d), the CLS, register and
positional embeddings, the epsilon stabilisers, and (attention = attnlrp) the softmax's Taylor bias.
"""

from __future__ import annotations

import torch

from cafe.erf.base import Attribution, ErfMethod, patch_sum
from cafe.erf.config import ErfConfig
from cafe.erf.lrp import check_supported, embed, pixel_gradient, residual_with_rules
from cafe.erf.mixed_precision import CastViews
from cafe.erf.rules import sae_rule
from cafe.feature_target import FeatureTarget


class AttnLRP(ErfMethod):
    """Layer-wise relevance propagation with the AttnLRP rules (params: erf.attnlrp)."""

    name = "attnlrp"

    def __init__(self, target: FeatureTarget, config: ErfConfig | None = None):
        super().__init__(target, config)
        check_supported(self.backbone)
        self.rules, self.views = self.config.attnlrp, CastViews(self.backbone)

    def _explain(self, pixels: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> Attribution:
        pixels = pixels.detach().requires_grad_(True)
        rows = torch.arange(len(pixels), device=pixels.device)
        with torch.enable_grad():
            embedded = embed(self.backbone, pixels)
            resid = residual_with_rules(self.views, embedded, self.target.layer, self.rules)
            z = sae_rule(resid[rows, tokens], self.target.sae, features, self.rules.epsilon)
            grad = pixel_gradient(z, embedded, pixels)
        maps = patch_sum(pixels.detach() * grad, self.backbone.patch_size)
        return Attribution(maps, z, z - maps.sum((1, 2)))
