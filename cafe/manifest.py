"""`cafe manifest`: a seeded, disjoint train/analysis draw from an ImageFolder, written as the manifest
contract (`cafe.io.manifest`)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cafe.config import DEMO_IMAGES, parse_section
from cafe.errors import CafeError
from cafe.images import list_images
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


def run_manifest(args: argparse.Namespace) -> None:
    """CLI: write the manifest CSV."""
    config = parse_section(DataConfig, args.params, "data")
    manifest = make_manifest(config)
    write_manifest(args.out, manifest)
    log.info(
        "manifest: %d train + %d analysis images of %d classes -> %s",
        config.n_train,
        config.n_analysis,
        manifest["class"].nunique(),
        args.out,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe manifest`."""
    parser = subparsers.add_parser("manifest", help="seeded train/analysis split of an ImageFolder")
    parser.add_argument("--params", required=True, help="params.yaml `data:` section as JSON")
    parser.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    parser.set_defaults(func=run_manifest)
