"""Synthetic inputs of the bench, seeded and made on the spot: a randomly initialised tower, a random SAE, random
images (as tensors, or as an ImageFolder with its manifest) and activation files of a chosen size."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from cafe.backbone import BackboneConfig
from cafe.backbone.tower import Backbone
from cafe.io import atomic_path, write_csv
from cafe.io.activations import LayerInfo, LayerWriter, layer_path
from cafe.manifest.config import DataConfig
from cafe.manifest.draw import make_manifest
from cafe.sae.model import MatryoshkaSAE
from cafe.tokens import TokenLayout

WRITE_ROWS = 1 << 16  # tokens generated and written at a time, so a large file never sits in memory


def load_tower(model: str, device: torch.device) -> Backbone:
    """The architecture `model` with seeded random weights (nothing is downloaded)."""
    return Backbone.load(BackboneConfig(model, None, seed=0, device=str(device)))


def random_sae(width: int, expansion: int, device: torch.device, seed: int = 0) -> MatryoshkaSAE:
    """A frozen SAE with random unit decoder directions (about half its latents fire on a token)."""
    torch.manual_seed(seed)
    return MatryoshkaSAE(width, expansion * width).to(device).eval().requires_grad_(False)


def random_images(n: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Images (n, 3, size, size) in [0, 1]."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)


def random_targets(n: int, backbone: Backbone, n_latents: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch tokens (n,) and SAE features (n,) of n targets."""
    rng = torch.Generator().manual_seed(seed)
    tokens = torch.randint(backbone.layout.n_prefix, backbone.n_tokens, (n,), generator=rng)
    return tokens, torch.randint(0, n_latents, (n,), generator=rng)


def photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB image: smooth colour fields with fine grain (noise alone would make JPEGs far slower to
    decode than a camera's)."""
    fields = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(fields).resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    return Image.fromarray(np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8))


def image_folder(
    root: Path, n_train: int, n_analysis: int, size: int, seed: int = 0, jpeg: bool = False
) -> tuple[Path, Path]:
    """Images in one class folder under `root/images`, and the manifest splitting them: (manifest, images). Random
    RGB PNGs of size x size, or with `jpeg` photo-like JPEGs of ImageNet's usual shape (4:3, the shorter side 5/3
    of the model's size: 373 x 497 for 224, like ImageNet's 375 x 500) at PIL's default quality."""
    rng = np.random.default_rng(seed)
    (root / "images" / "bench").mkdir(parents=True, exist_ok=True)
    for i in range(n_train + n_analysis):
        if jpeg:
            photo(size * 5 // 3 * 4 // 3, size * 5 // 3, rng).save(root / "images" / "bench" / f"{i:05d}.jpg")
        else:
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / "bench" / f"{i:05d}.png")
    manifest = root / "manifest.csv"
    write_csv(manifest, make_manifest(DataConfig(str(root / "images"), n_train, n_analysis, seed)))
    return manifest, root / "images"


def layer_file(
    out_dir: str | os.PathLike, width: int, layout: TokenLayout, train_tokens: int, n_analysis: int, seed: int = 0
) -> Path:
    """A complete activations file of Gaussian tokens in `layout`: `train_tokens` train rows and `n_analysis`
    whole images."""
    n_tokens = layout.n_tokens
    per_image = min(n_tokens, train_tokens)
    n_train = -(-train_tokens // per_image)
    info = LayerInfo(
        "bench", "random", 1, 0, 0, layout.grid, n_tokens, width, "bench", per_image, 0, int(layout.has_cls),
        layout.n_registers,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    path = layer_path(out_dir, 1)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        writer = LayerWriter(handle, info, n_train, n_analysis)
        images_per_write = max(1, WRITE_ROWS // per_image)
        for start in range(0, n_train, images_per_write):
            images = np.arange(start, min(start + images_per_write, n_train))
            tokens = np.tile(np.arange(per_image), (len(images), 1))
            writer.add_train(images, tokens, rng.standard_normal((len(images), per_image, width), np.float32))
        writer.add_analysis(np.arange(n_analysis), rng.standard_normal((n_analysis, n_tokens, width), np.float32))
        writer.finish()
    return path
