"""`cafe manifest`: a seeded, disjoint train/analysis draw from an ImageFolder, with each image's size and content
hash (reused from `cafe.io.hashes` while size and mtime are unchanged), written as the manifest contract
(`cafe.io.manifest`).

Every drawn image is checked before any extraction starts (`cafe.images.check_images`), so a broken file in a
million is reported with all the others at once, not an hour into extraction. `data.bad_images: error` (default)
stops with the list and a count; `skip` leaves them out of the manifest (renumbered) and lists them in
skipped_images.csv beside it, which the activation files count.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.images import check_images, list_images
from cafe.io.hashes import HASH_CACHE, HashCache
from cafe.io.manifest import MANIFEST_COLUMNS, SPLITS, skipped_path, write_manifest, write_skipped
from cafe.manifest.config import DataConfig

log = logging.getLogger(__name__)

SHOWN_BAD = 20  # broken files listed in the error message (all of them go to the log)


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


def bad_images_error(root: str, bad: pd.DataFrame, checked: int) -> CafeError:
    """One error for every broken image: the count, the first SHOWN_BAD by name, and the two ways out."""
    shown = "\n".join(f"  {Path(root) / p}: {r}" for p, r in zip(bad["path"][:SHOWN_BAD], bad["reason"][:SHOWN_BAD]))
    more = f"\n  ... and {len(bad) - SHOWN_BAD} more (all in the log)" if len(bad) > SHOWN_BAD else ""
    return CafeError(
        f"data.images: {len(bad)} of {checked} images cannot be read:\n{shown}{more}\n"
        f"remove or replace them, or set data.bad_images: skip to leave them out (listed in skipped_images.csv)"
    )


def screen_manifest(manifest: pd.DataFrame, config: DataConfig, workers: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every drawn image; returns (manifest without broken images, renumbered; the broken ones). Under
    bad_images = error any broken image is a CafeError listing them all."""
    bad = check_images(config.images, manifest, workers)
    for path, reason in zip(bad["path"], bad["reason"]):
        log.warning("bad image %s: %s", path, reason)
    if len(bad) and config.bad_images == "error":
        raise bad_images_error(config.images, bad, len(manifest))
    kept = manifest[~manifest["path"].isin(bad["path"])].reset_index(drop=True)
    kept["index"] = np.arange(len(kept))
    drawn = [split for split in SPLITS if (manifest["split"] == split).any()]  # no train split with data.n_train: 0
    missing = [split for split in drawn if not (kept["split"] == split).any()]
    if missing:
        raise CafeError(f"data.images: every {' and '.join(missing)} image was skipped as unreadable")
    return kept, bad


def with_content_hashes(manifest: pd.DataFrame, root: str | os.PathLike, hashes: HashCache) -> pd.DataFrame:
    """The manifest plus each image's size and MD5 (from the hash cache while size and mtime are unchanged)."""
    paths = [Path(root) / p for p in manifest["path"]]
    sizes, digests = [], []
    for path in tqdm(paths, desc="hashing images", unit="image", disable=len(paths) < 10_000):
        sizes.append(path.stat().st_size)
        digests.append(hashes.md5(path))
    return manifest.assign(size=sizes, md5=digests)


def run_manifest(args: argparse.Namespace) -> None:
    """CLI: check every drawn image, write the manifest CSV with each image's size and hash (an identical one is
    left untouched, so nothing downstream looks stale) and, beside it, the list of unreadable images left out."""
    config = parse_section(DataConfig, args.params, "data")
    available = len(os.sched_getaffinity(0))  # a scheduler's job may hold fewer CPUs than the machine has
    workers = min(args.workers or available, available)
    manifest, bad = screen_manifest(make_manifest(config), config, workers)
    with HashCache(args.hash_cache) as hashes:
        manifest = with_content_hashes(manifest, config.images, hashes)
    write_skipped(args.skipped or skipped_path(args.out), bad)
    wrote = write_manifest(args.out, manifest)
    counts = manifest["split"].value_counts()
    log.info(
        "manifest: %d train + %d analysis images of %d classes (%d unreadable skipped, %d hashed) -> %s",
        counts.get("train", 0),
        counts.get("analysis", 0),
        manifest["class"].nunique(),
        len(bad),
        hashes.hashed,
        args.out if wrote else f"{args.out} (unchanged, kept)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe manifest`."""
    parser = subparsers.add_parser("manifest", help="seeded train/analysis split of an ImageFolder")
    parser.add_argument("--params", required=True, help="params.yaml `data:` section as JSON")
    parser.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    parser.add_argument("--skipped", type=Path, help="skipped-image list to write (default: beside --out)")
    parser.add_argument("--workers", type=int, help="processes that check the images (default: every CPU held)")
    parser.add_argument("--hash-cache", default=HASH_CACHE, help=f"image hash cache (default {HASH_CACHE})")
    parser.set_defaults(func=run_manifest)
