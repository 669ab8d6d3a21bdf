"""What a backbone family (a library's ViT classes) tells cafe: how to build a tower, its token layout and
preprocessing, its token embedding and its blocks, each block as a `cafe.blocks.BlockView`. One file per family
(cafe/backbone/openclip.py, timm_vit.py, hf.py), one line in `cafe.backbone.registry`; a family imports its
library only inside its own module, so naming it costs nothing until a tower is built. This module imports no
torch: a tower's shape (`TowerShape`) is known from its config, which `cafe.params` reads as the DAG loads.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cafe.errors import CafeError
from cafe.tokens import TokenLayout

if TYPE_CHECKING:  # torch loads only where a tower is built: a tower's shape is known without it (cafe.params)
    import torch
    from torch import nn

    from cafe.blocks import BlockView

    Norm = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (LayerNorm or Identity, x) -> normalised x


def plain_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


@dataclass(frozen=True)
class Preprocess:
    """The model's own data config: input size, normalisation, and the eval crop (`cafe.images.Crop`): the shorter
    side resized to `resize` (None: to the input size), or the image squashed to a (height, width) `resize`, then
    the center crop."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int | tuple[int, int] | None = None


@dataclass(frozen=True)
class TowerShape:
    """What the architecture looks like, known without its weights."""

    depth: int
    width: int
    image_size: int
    patch_size: int
    layout: TokenLayout
    resize: int | tuple[int, int] | None = None  # the Preprocess's (None given: the shorter side to image_size)

    def __post_init__(self) -> None:
        if self.resize is None:
            object.__setattr__(self, "resize", self.image_size)

    @property
    def grid(self) -> int:
        return self.layout.grid

    @property
    def n_tokens(self) -> int:
        return self.layout.n_tokens


def fixed_size(family: str, model: str, own: int, image_size: int | None) -> None:
    """Families whose towers run at their own size only refuse another."""
    if image_size not in (None, own):
        raise CafeError(f"backbone.image_size: {family} {model!r} runs at {own} px only, not {image_size}")


class Family:
    """A library's ViT towers; `visual` is always the library's own module (what normal forwards run)."""

    name: str

    def shape(self, model: str, image_size: int | None = None) -> TowerShape:
        """Depth, width, sizes and token layout of `model` (at `image_size`, None: its own) without weights."""
        raise NotImplementedError

    def create(
        self, model: str, pretrained: str | None, seed: int, image_size: int | None = None
    ) -> tuple[nn.Module, Preprocess]:
        """The vision tower (weights from a tag, a local path or random from `seed`) and its preprocessing."""
        raise NotImplementedError

    def tower_family(self, visual: nn.Module) -> Family:
        """The family whose code reads the tower `create` built (another one's where a library wraps another's
        model: OpenCLIP's timm trunks)."""
        return self

    def describe(self, visual: nn.Module) -> TowerShape:
        """The shape of a built tower."""
        raise NotImplementedError

    def embed(self, visual: nn.Module, pixels: torch.Tensor, norm: Norm = plain_norm) -> torch.Tensor:
        """Normalised pixels -> tokens entering block 1 (patches, CLS, registers, positions, pre-norm via `norm`)."""
        raise NotImplementedError

    def blocks(self, visual: nn.Module) -> Sequence[nn.Module]:
        raise NotImplementedError

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The library's own forward of one block."""
        return block(x)

    def view(self, block: nn.Module) -> BlockView:
        """The block read part by part; a CafeError naming the block's class where it is not a plain pre-norm
        ViT block (no LRP rules or one-token path for it)."""
        raise NotImplementedError

    def patch_weight(self, visual: nn.Module) -> torch.Tensor:
        """The patch embedding's weight (its device and dtype are the tower's)."""
        raise NotImplementedError


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick probe, so an offline machine fails in seconds instead of minutes of download retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_cached(repo: str, names: Sequence[str]) -> bool:
    """True if the Hugging Face cache holds one of the files `names` of `repo`."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)
