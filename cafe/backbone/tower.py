"""`Backbone`: a frozen vision tower of any family with its preprocessing, token layout and truncated forwards
(the package docstring, cafe/backbone/__init__.py, says what a layer is)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from cafe.backbone import BackboneConfig
from cafe.backbone.family import Family, Preprocess
from cafe.backbone.registry import family_of, get_family
from cafe.blocks import BlockView, block_at_tokens
from cafe.compute import full_precision
from cafe.devices import resolve_device
from cafe.errors import CafeError

log = logging.getLogger(__name__)


class Backbone:
    """A frozen vision tower of any family with its preprocessing, token layout and truncated forwards."""

    def __init__(
        self,
        visual: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        name: str,
        tag: str,
        family: Family | None = None,
        preprocess: Preprocess | None = None,
    ):
        self.visual = visual.eval().requires_grad_(False)
        self.family = family or get_family("openclip")
        self.name, self.tag = name, tag
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.shape = shape = self.family.describe(visual)
        self.layout, self.image_size, self.patch_size = shape.layout, shape.image_size, shape.patch_size
        self.depth, self.width, self.grid, self.n_tokens = shape.depth, shape.width, shape.grid, shape.n_tokens
        self.preprocess = preprocess or Preprocess(self.image_size, tuple(mean), tuple(std), shape.resize)
        self.resize = self.preprocess.resize or self.image_size  # the shorter side before the center crop

    @classmethod
    def load(cls, cfg: BackboneConfig) -> Backbone:
        """Load by family, name + tag / local checkpoint / random seed; move to the configured device."""
        family = get_family(family_of(cfg.model, cfg.family))
        visual, pp = family.create(cfg.model, cfg.pretrained, cfg.seed, cfg.image_size)
        family = family.tower_family(visual)
        tag = cfg.pretrained or f"random-seed{cfg.seed}"
        backbone = cls(visual, pp.mean, pp.std, cfg.model, tag, family, pp)
        log.info(
            "loaded %s %s (%s): depth %d, width %d, %s",
            family.name,
            cfg.model,
            backbone.tag,
            backbone.depth,
            backbone.width,
            backbone.layout,
        )
        return backbone.to(resolve_device(cfg.device))

    @property
    def device(self) -> torch.device:
        return self.family.patch_weight(self.visual).device

    def to(self, device: torch.device | str) -> Backbone:
        self.visual.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] (B, 3, H, W) to the model's normalised input space."""
        return (images.to(self.device) - self.mean) / self.std

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels -> token sequence entering block 1 (patch embedding, CLS, registers, positions,
        pre-norm), in float32 even under bf16 autocast, so that the residual stream stays float32 (cafe.compute)."""
        with full_precision(pixels.device):
            return self.family.embed(self.visual, pixels)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.family.blocks(self.visual))

    def view(self, layer: int) -> BlockView:
        """Block `layer` (1-based) read part by part (`cafe.blocks.BlockView`)."""
        return self.family.view(self.blocks[layer - 1])

    def check_layer(self, layer: int) -> None:
        if not 1 <= layer <= self.depth:
            raise CafeError(f"layer {layer} does not exist: {self.name} has blocks 1..{self.depth}")

    def run_blocks(self, tokens: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run blocks start+1..stop (1-based, inclusive) on a residual stream that has passed `start` blocks."""
        for block in self.blocks[start:stop]:
            tokens = self.family.run_block(block, tokens)
        return tokens

    def forward_to(self, pixels: torch.Tensor, layer: int) -> torch.Tensor:
        """Residual stream after block `layer`, running only blocks 1..layer."""
        self.check_layer(layer)
        return self.run_blocks(self.embed(pixels), 0, layer)

    def forward_at(self, pixels: torch.Tensor, layer: int, tokens: torch.Tensor) -> torch.Tensor:
        """Residual stream after block `layer` at one token per row (B, D): blocks 1..layer-1 in full, block
        `layer` for that token only (cafe.blocks), which is all a scalar target reads; a block with no view
        runs in full and is read at the tokens."""
        return self.forward_at_embedded(self.embed(pixels), layer, tokens)

    def forward_at_embedded(self, embedded: torch.Tensor, layer: int, tokens: torch.Tensor) -> torch.Tensor:
        """`forward_at` from the token sequence entering block 1 (`embed`'s output, (B, T, D))."""
        self.check_layer(layer)
        return self.last_block_at(self.run_blocks(embedded, 0, layer - 1), layer, tokens)

    def last_block_at(self, x: torch.Tensor, layer: int, tokens: torch.Tensor) -> torch.Tensor:
        """Block `layer`'s output (B, D) at token tokens[b] of row b, from the residual stream x (B, T, D) that has
        passed blocks 1..layer-1 (`forward_at`'s last step: callers that share x between targets run it once)."""
        tokens = tokens.to(x.device)
        try:
            view = self.view(layer)
        except CafeError:
            return self.run_blocks(x, layer - 1, layer)[torch.arange(len(x), device=x.device), tokens]
        return block_at_tokens(view, x, tokens)

    def forward_layers(self, pixels: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Residual streams after each requested block from one pass that stops at the deepest one."""
        for layer in layers:
            self.check_layer(layer)
        out: dict[int, torch.Tensor] = {}
        tokens, done = self.embed(pixels), 0
        for layer in sorted(set(layers)):
            tokens = self.run_blocks(tokens, done, layer)
            out[layer], done = tokens, layer
        return out
