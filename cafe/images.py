"""Images in: an ImageFolder reader (`<root>/<class>/<image>`), the seeded train/analysis manifest, and image
loading with OpenCLIP's eval transform (resize the shorter side, center crop, RGB, [0, 1]).

manifest.csv columns: `index` (row id, what every later file calls an image), `split` (train | analysis),
`path` (relative to the root, posix), `class` (the class folder's name), and the image file's `size` (bytes) and
`md5` (content hash), so that DVC, which tracks the manifest, sees a changed image even where the folder itself
(ImageNet) is not tracked. Hashes are reused while an image's size and mtime are unchanged (`cafe.hashes`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from tqdm import tqdm

from cafe.errors import CafeError
from cafe.hashes import HASH_CACHE, HashCache
from cafe.io import write_text
from cafe.params import DEMO_IMAGES, parse_section

if TYPE_CHECKING:  # torch and torchvision load only when images are (steps that read CSVs start fast)
    import torch
    from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
MANIFEST_COLUMNS = ("index", "split", "path", "class")
CONTENT_COLUMNS = ("size", "md5")
SPLITS = ("train", "analysis")


@dataclass(frozen=True)
class DataConfig:
    """Which images the pipeline sees (params.yaml `data:`)."""

    images: str = DEMO_IMAGES
    n_train: int = 1600
    n_analysis: int = 240
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_analysis"):
            if getattr(self, name) < 1:
                raise CafeError(f"params: data.{name} must be >= 1, got {getattr(self, name)}")


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


def make_manifest(config: DataConfig) -> pd.DataFrame:
    """A seeded, disjoint draw of n_train + n_analysis images; rows of each split in path order."""
    images = list_images(config.images)
    wanted = config.n_train + config.n_analysis
    if wanted > len(images):
        raise CafeError(
            f"data: n_train + n_analysis = {config.n_train} + {config.n_analysis} = {wanted}, but "
            f"{config.images!r} holds only {len(images)} images"
        )
    order = np.random.default_rng(config.seed).permutation(len(images))
    picks = {"train": order[: config.n_train], "analysis": order[config.n_train : wanted]}
    parts = [images.iloc[np.sort(rows)].assign(split=split) for split, rows in picks.items()]
    manifest = pd.concat(parts, ignore_index=True)
    manifest.insert(0, "index", np.arange(len(manifest)))
    return manifest[list(MANIFEST_COLUMNS)]


def with_content_hashes(manifest: pd.DataFrame, root: str | os.PathLike, hashes: HashCache) -> pd.DataFrame:
    """The manifest plus each image's size and MD5 (from the hash cache while size and mtime are unchanged)."""
    paths = [Path(root) / p for p in manifest["path"]]
    sizes, digests = [], []
    for path in tqdm(paths, desc="hashing images", unit="image", disable=len(paths) < 10_000):
        sizes.append(path.stat().st_size)
        digests.append(hashes.md5(path))
    return manifest.assign(size=sizes, md5=digests)


def read_manifest(path: str | os.PathLike, split: str | None = None) -> pd.DataFrame:
    """Read a manifest (optionally one split), checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise CafeError(f"{path}: manifest not found (has the `manifest` step run?)")
    manifest = pd.read_csv(path, dtype={"path": str, "class": str, "split": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise CafeError(f"{path}: manifest lacks column(s) {missing}; re-run the `manifest` step")
    if split is None:
        return manifest
    if split not in SPLITS:
        raise CafeError(f"{path}: unknown split {split!r} (splits: {SPLITS})")
    return manifest[manifest["split"] == split].reset_index(drop=True)


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


def manifest_params(args: argparse.Namespace) -> dict[str, Any] | str:
    """The `data:` section: JSON from a rule (--params) or read from params.yaml (--params-file, DVC's stage)."""
    if args.params is not None:
        return args.params
    path = Path(args.params_file)
    if not path.is_file():
        raise CafeError(f"{path}: params file not found")
    params = yaml.safe_load(path.read_text()) or {}
    if "data" not in params:
        raise CafeError(f"{path}: no `data:` section")
    return params["data"]


def run_manifest(args: argparse.Namespace) -> None:
    """CLI: write the manifest CSV, leaving an identical file untouched (so nothing downstream looks stale)."""
    config = parse_section(DataConfig, manifest_params(args), "data")
    with HashCache(args.hash_cache) as hashes:
        manifest = with_content_hashes(make_manifest(config), config.images, hashes)
    text = manifest.to_csv(index=False)
    if args.out.is_file() and args.out.read_text() == text:
        log.info("manifest: unchanged, %s kept", args.out)
        return
    write_text(args.out, text)
    log.info(
        "manifest: %d train + %d analysis images of %d classes (%d hashed) -> %s",
        config.n_train,
        config.n_analysis,
        manifest["class"].nunique(),
        hashes.hashed,
        args.out,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe manifest`."""
    parser = subparsers.add_parser("manifest", help="seeded train/analysis split of an ImageFolder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--params", help="params.yaml `data:` section as JSON")
    source.add_argument("--params-file", help="a params.yaml to read the `data:` section from")
    parser.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    parser.add_argument("--hash-cache", default=HASH_CACHE, help=f"image hash cache (default {HASH_CACHE})")
    parser.set_defaults(func=run_manifest)
