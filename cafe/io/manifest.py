"""The manifest (`results/data/manifest.csv`): which images the pipeline sees, in which split and order.

index  row id: what every later file calls an image
split  train | analysis
path   relative to the image root, posix
class  the class folder's name
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cafe.errors import CafeError
from cafe.io.atomic import write_csv

MANIFEST_COLUMNS = ("index", "split", "path", "class")
SPLITS = ("train", "analysis")


def write_manifest(path: str | os.PathLike, manifest: pd.DataFrame) -> None:
    """Write a manifest atomically, columns in contract order."""
    write_csv(path, manifest[list(MANIFEST_COLUMNS)])


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
