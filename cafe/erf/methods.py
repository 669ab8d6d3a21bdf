"""The comparison methods of the paper (Fig. 3) behind the same interface as AttnLRP: gradient (x input),
Integrated Gradients through captum, and the activation baseline (KernelSHAP: `cafe.erf.kernelshap`). Baselines
are the mean canvas (zeros in normalised input space = the dataset's mean colour), the canvas of the insertion
test.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from captum.attr import IntegratedGradients as CaptumIG

from cafe.erf.base import Attribution, ErfMethod, nan_like, patch_sum


class Gradient(ErfMethod):
    """Gradient x input summed per patch (params: erf.gradient.times_input), or saliency sum |gradient|."""

    name = "gradient"

    def _explain(self, pixels: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> Attribution:
        pixels = pixels.detach().requires_grad_(True)
        with torch.enable_grad():
            z = self.target(pixels, tokens, features)
            (grad,) = torch.autograd.grad(z.sum(), pixels)
        patch = self.backbone.patch_size
        if not self.config.gradient.times_input:
            return Attribution(patch_sum(grad.abs(), patch), z, nan_like(z))
        maps = patch_sum(pixels.detach() * grad, patch)
        return Attribution(maps, z, z - maps.sum((1, 2)))


class CanvasMethod(ErfMethod):
    """Methods that decompose z(image) - z(mean canvas); the remainder is their completeness/efficiency gap."""

    def _explain(self, pixels: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> Attribution:
        canvas = torch.zeros_like(pixels)
        with torch.no_grad():
            z, z_canvas = self.target(pixels, tokens, features), self.target(canvas, tokens, features)
        maps = self._canvas_maps(pixels, canvas, tokens, features)
        return Attribution(maps, z, (z - z_canvas) - maps.sum((1, 2)))

    @abstractmethod
    def _canvas_maps(
        self, pixels: torch.Tensor, canvas: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """Patch maps (B, grid, grid) whose sum approximates z(pixels) - z(canvas)."""


class IntegratedGradients(CanvasMethod):
    """Integrated Gradients along the straight path from the mean canvas (params: erf.ig.steps)."""

    name = "ig"

    def _canvas_maps(self, pixels, canvas, tokens, features) -> torch.Tensor:
        attr = CaptumIG(self.target).attribute(
            pixels,
            baselines=canvas,
            additional_forward_args=(tokens, features),
            n_steps=self.config.ig.steps,
            internal_batch_size=max(self.config.batch_size, len(pixels)),
        )
        return patch_sum(attr, self.backbone.patch_size)


class Activation(ErfMethod):
    """The paper's baseline: the feature's own activation on each patch token (not an attribution)."""

    name = "activation"

    def _explain(self, pixels: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> Attribution:
        rows = torch.arange(len(pixels), device=pixels.device)
        with torch.no_grad():
            acts = self.target.latents(pixels)[rows, :, features]
        z = acts[rows, tokens]
        return Attribution(self.backbone.layout.token_grid(acts), z, nan_like(z))
