"""The vision backbone: an OpenCLIP VisionTransformer loaded by (model name, pretrained tag or local path),
with truncated forwards that run only blocks 1..L.

Layer L (1-based) means the residual stream *after* block L; tokens are CLS first, then the patch grid
row-major. Everything downstream (activations, ERF, insertion) goes through `Backbone`, so the demo tower
and ViT-L/14 share one code path.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

from cafe.blocks import block_at_tokens
from cafe.compute import full_precision
from cafe.devices import resolve_device
from cafe.errors import CafeError

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "models"
open_clip.add_model_config(MODEL_CONFIG_DIR)  # registers cafe's demo architectures by name; patches nothing


@dataclass(frozen=True)
class BackboneConfig:
    """Which tower to load: an OpenCLIP model name plus a pretrained tag, a local checkpoint path, or None
    (random weights from `seed`)."""

    model: str
    pretrained: str | None = None
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class TowerShape:
    """What the architecture looks like, known from its config alone (no weights needed)."""

    depth: int
    width: int
    image_size: int
    patch_size: int

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_tokens(self) -> int:
        return 1 + self.grid**2


def tower_shape(model: str) -> TowerShape:
    """Read depth, width and image/patch size of an OpenCLIP model from its config, without weights."""
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        known = ", ".join(sorted(open_clip.list_models())[:12])
        raise CafeError(f"backbone.model: unknown OpenCLIP model {model!r} (known include: {known}, ...)")
    vision = cfg["vision_cfg"]
    if vision.get("timm_model_name"):
        raise CafeError(f"backbone.model: {model!r} is a timm tower; cafe needs an OpenCLIP VisionTransformer")
    return TowerShape(
        depth=int(vision["layers"]),
        width=int(vision["width"]),
        image_size=int(vision["image_size"]),
        patch_size=int(vision["patch_size"]),
    )


def _is_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _weights_cached(model: str, tag: str) -> bool:
    """True if the Hugging Face cache already holds the weights of an OpenCLIP (model, tag)."""
    from huggingface_hub import try_to_load_from_cache

    hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "")
    if not hub:
        return False
    repo, filename = os.path.split(hub)
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    names += [n.rsplit(".", 1)[0] + ".safetensors" for n in names if n.endswith((".bin", ".pth"))]
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick probe, so an offline machine fails in seconds instead of minutes of download retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _create(cfg: BackboneConfig) -> nn.Module:
    """Build the CLIP model with OpenCLIP's own factory; turn download failures into guidance."""
    tower_shape(cfg.model)  # a clear error for unknown names before any download
    pretrained = cfg.pretrained
    if pretrained and _is_path(pretrained) and not Path(pretrained).is_file():
        raise CafeError(f"backbone.pretrained: checkpoint file {pretrained!r} not found")
    if pretrained and not _is_path(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(cfg.model)
        if pretrained not in tags:
            raise CafeError(
                f"backbone.pretrained: {pretrained!r} is not a tag of {cfg.model} (tags: {tags}) nor a file"
            )
        if not _weights_cached(cfg.model, pretrained) and not _hub_reachable():
            raise CafeError(_offline_message(cfg.model, pretrained, "no network and no cached copy"))
    torch.manual_seed(cfg.seed)
    try:
        return open_clip.create_model(cfg.model, pretrained=pretrained or None, device="cpu")
    except RuntimeError as exc:
        if pretrained and not _is_path(pretrained):
            raise CafeError(_offline_message(cfg.model, pretrained, str(exc))) from exc
        raise CafeError(f"backbone: could not load {cfg.model} from {pretrained!r}: {exc}") from exc


def _offline_message(model: str, tag: str, why: str) -> str:
    return (
        f"backbone: cannot get OpenCLIP weights {model}/{tag} ({why}). On a machine with network run "
        f'`python -c "import open_clip; open_clip.create_model({model!r}, pretrained={tag!r})"` to fill the '
        f"Hugging Face cache (copy ~/.cache/huggingface over), or save the checkpoint file and set "
        f"backbone.pretrained to its local path."
    )


class Backbone:
    """A frozen OpenCLIP vision tower with preprocessing and truncated forwards."""

    def __init__(self, visual: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], name: str, tag: str):
        self.visual = visual.eval().requires_grad_(False)
        self.name, self.tag = name, tag
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        size = visual.image_size
        patch = visual.patch_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.grid = self.image_size // self.patch_size
        self.n_tokens = 1 + self.grid**2
        self.depth = len(visual.transformer.resblocks)
        self.width = visual.transformer.width

    @classmethod
    def load(cls, cfg: BackboneConfig) -> Backbone:
        """Load by OpenCLIP name + tag / local checkpoint / random seed, and move to the configured device."""
        model = _create(cfg)
        pp = open_clip.get_model_preprocess_cfg(model)
        backbone = cls(
            model.visual, tuple(pp["mean"]), tuple(pp["std"]), cfg.model, cfg.pretrained or f"random-seed{cfg.seed}"
        )
        log.info(
            "loaded %s (%s): depth %d, width %d, grid %dx%d",
            cfg.model,
            backbone.tag,
            backbone.depth,
            backbone.width,
            backbone.grid,
            backbone.grid,
        )
        return backbone.to(resolve_device(cfg.device))

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    def to(self, device: torch.device | str) -> Backbone:
        self.visual.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] (B, 3, H, W) to the model's normalised input space."""
        return (images.to(self.device) - self.mean) / self.std

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels -> token sequence entering block 1 (patch embedding, CLS, positions, ln_pre), in
        float32 even under bf16 autocast, so that the residual stream stays float32 (cafe.compute)."""
        with full_precision(pixels.device):
            return self.visual._embeds(pixels.to(self.visual.conv1.weight.dtype))

    def check_layer(self, layer: int) -> None:
        if not 1 <= layer <= self.depth:
            raise CafeError(f"layer {layer} does not exist: {self.name} has blocks 1..{self.depth}")

    def run_blocks(self, tokens: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run blocks start+1..stop (1-based, inclusive) on a residual stream that has passed `start` blocks."""
        for block in self.visual.transformer.resblocks[start:stop]:
            tokens = block(tokens)
        return tokens

    def forward_to(self, pixels: torch.Tensor, layer: int) -> torch.Tensor:
        """Residual stream after block `layer`, running only blocks 1..layer."""
        self.check_layer(layer)
        return self.run_blocks(self.embed(pixels), 0, layer)

    def forward_at(self, pixels: torch.Tensor, layer: int, tokens: torch.Tensor) -> torch.Tensor:
        """Residual stream after block `layer` at one token per row (B, D): blocks 1..layer-1 in full, block
        `layer` for that token only (cafe.blocks), which is all a scalar target reads."""
        self.check_layer(layer)
        x = self.run_blocks(self.embed(pixels), 0, layer - 1)
        return block_at_tokens(self.visual.transformer.resblocks[layer - 1], x, tokens.to(x.device))

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
