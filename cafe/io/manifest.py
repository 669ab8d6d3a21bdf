"""The manifest (`results/data/manifest.csv`): which images the pipeline sees, in which split and order.

index  row id: what every later file calls an image
split  train | analysis
path   relative to the image root, posix
class  the class folder's name
size   the image file's size in bytes       } written by the manifest step, so that DVC, which tracks the
md5    the image file's MD5 (content hash)  } manifest, sees a changed image even where it does not track the
                                              folder (ImageNet); readers need only the four columns above

Beside it, `skipped_images.csv` lists the unreadable images the manifest step left out (`data.bad_images: skip`):
path, class, reason; empty (header only) when none were.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cafe.errors import CafeError
from cafe.io.atomic import write_text

if TYPE_CHECKING:  # pandas loads with the first read: the DAG's params (cafe.images' names) need none of it
    import pandas as pd

MANIFEST_COLUMNS = ("index", "split", "path", "class")
SKIPPED_COLUMNS = ("path", "class", "reason")
CONTENT_COLUMNS = ("size", "md5")
SPLITS = ("train", "analysis")


def replace_if_changed(path: str | os.PathLike, text: str) -> bool:
    """Write `text` atomically unless an identical file is there (left as it is, its time too, so nothing
    downstream looks out of date). Returns whether it wrote."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    write_text(path, text)
    return True


def write_manifest(path: str | os.PathLike, manifest: pd.DataFrame) -> bool:
    """Write a manifest, columns in contract order (an identical file is kept); returns whether it wrote."""
    columns = list(MANIFEST_COLUMNS) + [c for c in CONTENT_COLUMNS if c in manifest.columns]
    return replace_if_changed(path, manifest[columns].to_csv(index=False))


def read_manifest(path: str | os.PathLike, split: str | None = None) -> pd.DataFrame:
    """Read a manifest (optionally one split), checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise CafeError(f"{path}: manifest not found (has the `manifest` step run?)")
    import pandas as pd

    manifest = pd.read_csv(path, dtype={"path": str, "class": str, "split": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise CafeError(f"{path}: manifest lacks column(s) {missing}; re-run the `manifest` step")
    if split is None:
        return manifest
    if split not in SPLITS:
        raise CafeError(f"{path}: unknown split {split!r} (splits: {SPLITS})")
    return manifest[manifest["split"] == split].reset_index(drop=True)


def skipped_path(manifest: str | os.PathLike) -> Path:
    """Where the skipped-image list of a manifest lives: beside it."""
    return Path(manifest).with_name("skipped_images.csv")


def write_skipped(path: str | os.PathLike, skipped: pd.DataFrame) -> bool:
    """Write the skipped-image list (an identical file is kept); returns whether it wrote."""
    return replace_if_changed(path, skipped[list(SKIPPED_COLUMNS)].to_csv(index=False))


def read_skipped(path: str | os.PathLike) -> pd.DataFrame:
    """The skipped-image list written by the manifest step (a missing file is an error naming it)."""
    path = Path(path)
    if not path.is_file():
        raise CafeError(f"{path}: skipped-image list not found; re-run the `manifest` step")
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False)
