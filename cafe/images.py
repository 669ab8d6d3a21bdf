"""Images in: an ImageFolder reader (`<root>/<class>/<image>`), the seeded train/analysis manifest, and image
loading with OpenCLIP's eval transform (resize the shorter side, center crop, RGB, [0, 1]).

manifest.csv columns: `index` (row id, what every later file calls an image), `split` (train | analysis),
`path` (relative to the root, posix), `class` (the class folder's name).

Every drawn image is checked before any extraction starts (`check_images`: header, size, and the end marker of
JPEG/PNG files, in worker processes), so a broken file in a million is reported with all the others at once,
not an hour into extraction. `data.bad_images: error` (default) stops with the list; `skip` leaves them out of
the manifest and lists them in skipped_images.csv beside it (columns `path`, `class`, `reason`), which the
activation files count.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from cafe.errors import CafeError
from cafe.io import write_csv
from cafe.params import DEMO_IMAGES, parse_section

if TYPE_CHECKING:  # torch and torchvision load only when images are (steps that read CSVs start fast)
    import torch
    from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
MANIFEST_COLUMNS = ("index", "split", "path", "class")
SKIPPED_COLUMNS = ("path", "class", "reason")
SPLITS = ("train", "analysis")
BAD_IMAGES = ("error", "skip")
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}  # where a truncated file ends without them
TAIL_BYTES = 4096  # the end marker is looked for this far from the end (valid files may carry trailing bytes)
SHOWN_BAD = 20  # broken files listed in the error message (all of them go to the log)


@dataclass(frozen=True)
class DataConfig:
    """Which images the pipeline sees (params.yaml `data:`)."""

    images: str = DEMO_IMAGES
    n_train: int = 1600
    n_analysis: int = 240
    seed: int = 0
    bad_images: str = "error"  # error: stop and list every broken image; skip: leave them out, listed

    def __post_init__(self) -> None:
        for name in ("n_train", "n_analysis"):
            if getattr(self, name) < 1:
                raise CafeError(f"params: data.{name} must be >= 1, got {getattr(self, name)}")
        if self.bad_images not in BAD_IMAGES:
            raise CafeError(f"params: data.bad_images must be one of {BAD_IMAGES}, got {self.bad_images!r}")


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


def image_problem(path: str | os.PathLike) -> str | None:
    """Why an image file would stop extraction, or None. Cheap: the header and the file's last bytes; a file
    whose end marker is missing is decoded (at reduced scale) to tell trailing bytes from truncation."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            if min(image.size) < 1:
                return f"image of size {image.size[0]}x{image.size[1]}"
            marker = END_MARKERS.get(image.format)
            if marker is None or marker in _tail(path):
                return None
            image.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; enough to reach the end of the data
            image.load()
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises all three for broken files
        return f"{exc}".strip() or type(exc).__name__
    return None


def _tail(path: Path) -> bytes:
    """The file's last TAIL_BYTES bytes (trailing NUL padding removed)."""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - TAIL_BYTES))
        return handle.read().rstrip(b"\0")


def check_images(root: str | os.PathLike, rows: pd.DataFrame, workers: int = 1) -> pd.DataFrame:
    """The rows (columns `path`, `class`) whose image would not load, with a `reason` column; checked in
    `workers` processes (a million files take minutes on one core)."""
    paths = [Path(root) / p for p in rows["path"]]
    if workers > 1 and len(paths) > workers:
        with ProcessPoolExecutor(workers) as pool:
            reasons = list(pool.map(image_problem, paths, chunksize=max(1, min(256, len(paths) // (4 * workers)))))
    else:
        reasons = [image_problem(p) for p in paths]
    bad = rows.assign(reason=reasons).dropna(subset=["reason"])
    return bad[list(SKIPPED_COLUMNS)].reset_index(drop=True)


def bad_images_error(root: str | os.PathLike, bad: pd.DataFrame, checked: int) -> CafeError:
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
    return kept, bad


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


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB 8 bit; 16/32-bit integer grays are scaled down (PIL's convert would clip them at 255: all white).
    EXIF orientation is not applied, as in OpenCLIP's and torchvision's preprocessing."""
    if image.mode.startswith("I"):  # I;16, I;16B, I (16-bit PNGs, TIFFs)
        gray = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or gray.max() <= 65535 else gray.max()
        image = Image.fromarray(np.clip(np.round(gray * 255.0 / top), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def load_image(path: str | os.PathLike, transform: Callable[[Image.Image], Any]) -> torch.Tensor:
    """One image as RGB (3, size, size) in [0, 1]; a file PIL cannot decode is a CafeError naming it."""
    try:
        with Image.open(path) as image:
            return transform(to_rgb(image))
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


def run_manifest(args: argparse.Namespace) -> None:
    """CLI: write the manifest CSV."""
    config = parse_section(DataConfig, args.params, "data")
    manifest, bad = screen_manifest(make_manifest(config), config, args.workers)
    missing = [split for split in SPLITS if not (manifest["split"] == split).any()]
    if missing:
        raise CafeError(f"data.images: every {' and '.join(missing)} image was skipped as unreadable")
    write_csv(skipped_path(args.out, args.skipped), bad)
    write_csv(args.out, manifest)
    counts = manifest["split"].value_counts()
    log.info(
        "manifest: %d train + %d analysis images of %d classes (%d unreadable skipped) -> %s",
        counts.get("train", 0),
        counts.get("analysis", 0),
        manifest["class"].nunique(),
        len(bad),
        args.out,
    )


def skipped_path(manifest: str | os.PathLike, given: str | os.PathLike | None = None) -> Path:
    """Where the skipped-image list of a manifest lives: beside it, unless given."""
    return Path(given) if given else Path(manifest).with_name("skipped_images.csv")


def read_skipped(path: str | os.PathLike) -> pd.DataFrame:
    """The skipped-image list written by the manifest step (a missing file is an error naming it)."""
    path = Path(path)
    if not path.is_file():
        raise CafeError(f"{path}: skipped-image list not found; re-run the `manifest` step")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe manifest`."""
    parser = subparsers.add_parser("manifest", help="seeded train/analysis split of an ImageFolder")
    parser.add_argument("--params", required=True, help="params.yaml `data:` section as JSON")
    parser.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    parser.add_argument("--skipped", type=Path, help="skipped-image list to write (default: beside --out)")
    parser.add_argument("--workers", type=int, default=1, help="processes that check the images")
    parser.set_defaults(func=run_manifest)
