"""Images in: an ImageFolder lister (`<root>/<class>/<image>`) and image loading with OpenCLIP's eval transform
(resize the shorter side, center crop, RGB, [0, 1]), by path or by manifest index."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from cafe.errors import CafeError
from cafe.io import file_hash
from cafe.io.features import FeatureFile
from cafe.io.manifest import read_manifest

if TYPE_CHECKING:  # torch and torchvision load only when images are (steps that read CSVs start fast)
    import torch
    from torch.utils.data import DataLoader

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
ImageLoader = Callable[[np.ndarray], "torch.Tensor"]  # manifest indices -> (B, 3, H, W) in [0, 1]


def list_images(root: str | os.PathLike) -> pd.DataFrame:
    """All images under `<root>/<class>/` (any depth), sorted by path; columns `path` and `class`."""
    root = Path(root)
    if not root.is_dir():
        raise CafeError(f"data.images: image folder {str(root)!r} not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CafeError(f"data.images: {str(root)!r} has no class folders (expected <root>/<class>/<image>)")
    rows = [(path, name) for name in classes for path in _images_in(root, name)]
    if not rows:
        raise CafeError(
            f"data.images: no images ({', '.join(IMAGE_EXTENSIONS)}) in the {len(classes)} class "
            f"folder(s) of {str(root)!r}"
        )
    return pd.DataFrame(sorted(rows), columns=["path", "class"])


def _images_in(root: Path, name: str) -> list[str]:
    """Posix paths (relative to root) of the image files under one class folder."""
    found = []
    for folder, dirs, files in os.walk(root / name, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root)
        found += [(rel / f).as_posix() for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def eval_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """OpenCLIP's eval transform without normalisation: shorter side to `size` (bicubic), center crop."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
        ]
    )


def load_image(path: str | os.PathLike, transform: Callable[[Image.Image], Any]) -> torch.Tensor:
    """One image as RGB (3, size, size) in [0, 1]; a file PIL cannot decode is a CafeError naming it."""
    try:
        with Image.open(path) as image:
            return transform(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's decoders raise all three for broken files
        raise CafeError(f"{path}: cannot read image ({exc}); remove or replace the file") from exc


def load_images(root: str | os.PathLike, paths: list[str], size: int) -> torch.Tensor:
    """Images at `root/path` as one float batch (B, 3, size, size) in [0, 1]."""
    import torch

    transform = eval_transform(size)
    return torch.stack([load_image(Path(root) / p, transform) for p in paths])


class ManifestImages:
    """Rows of a manifest as (manifest index, image) pairs: a map-style dataset for a DataLoader."""

    def __init__(self, root: str | os.PathLike, rows: pd.DataFrame, size: int):
        self.root, self.transform = Path(root), eval_transform(size)
        self.indices, self.paths = rows["index"].to_numpy(), rows["path"].tolist()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return int(self.indices[i]), load_image(self.root / self.paths[i], self.transform)


def image_batches(
    root: str | os.PathLike,
    rows: pd.DataFrame,
    size: int,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches of (manifest indices (B,), images (B, 3, size, size)) in manifest order."""
    from torch.utils.data import DataLoader

    return DataLoader(
        ManifestImages(root, rows, size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def manifest_loader(manifest: str, root: str, size: int, ff: FeatureFile) -> ImageLoader:
    """A function from manifest indices to images (B, 3, size, size) in [0, 1]; checks the features' indices exist."""
    if ff.manifest_hash and ff.manifest_hash != file_hash(manifest):
        raise CafeError(f"{ff.path}: found on another manifest than {manifest}; re-run the features step")
    frame = read_manifest(manifest)
    paths = dict(zip(frame["index"].tolist(), frame["path"]))
    missing = sorted(set(np.unique(ff.image[ff.image >= 0]).tolist()) - set(paths))
    if missing:
        raise CafeError(f"{ff.path}: image indices {missing[:5]} are not in {manifest}; the manifest changed since")
    return lambda indices: load_images(root, [paths[i] for i in indices.tolist()], size)
