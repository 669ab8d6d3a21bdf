"""`cafe manifest`: a seeded, disjoint train/analysis draw from an ImageFolder, with each image's size and content
hash (reused from `cafe.io.hashes` while size and mtime are unchanged), written as the manifest contract
(`cafe.io.manifest`)."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from cafe.config import DEMO_IMAGES, parse_section
from cafe.errors import CafeError
from cafe.images import list_images
from cafe.io.hashes import HASH_CACHE, HashCache
from cafe.io.manifest import MANIFEST_COLUMNS, write_manifest

log = logging.getLogger(__name__)


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
    """CLI: write the manifest CSV (an identical one is left untouched, so nothing downstream looks stale)."""
    config = parse_section(DataConfig, manifest_params(args), "data")
    if args.images_dep is not None and Path(args.images_dep) != Path(config.images):
        raise CafeError(
            f"dvc.yaml: the manifest stage tracks images folder {args.images_dep!r} (vars: images), but params "
            f"data.images is {config.images!r}; set both to the same folder"
        )
    with HashCache(args.hash_cache) as hashes:
        manifest = with_content_hashes(make_manifest(config), config.images, hashes)
    wrote = write_manifest(args.out, manifest)
    log.info(
        "manifest: %d train + %d analysis images of %d classes (%d hashed) -> %s",
        config.n_train,
        config.n_analysis,
        manifest["class"].nunique(),
        hashes.hashed,
        args.out if wrote else f"{args.out} (unchanged, kept)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe manifest`."""
    parser = subparsers.add_parser("manifest", help="seeded train/analysis split of an ImageFolder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--params", help="params.yaml `data:` section as JSON")
    source.add_argument("--params-file", help="a params.yaml to read the `data:` section from")
    parser.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    parser.add_argument("--images-dep", help="the folder DVC tracks for this step (must be data.images)")
    parser.add_argument("--hash-cache", default=HASH_CACHE, help=f"image hash cache (default {HASH_CACHE})")
    parser.set_defaults(func=run_manifest)
