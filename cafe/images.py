"""Images in: an ImageFolder lister (`<root>/<class>/<image>`), a cheap check of image files (`image_problem`,
`check_images`: header, size and the end marker of JPEG/PNG files, in worker processes), and image loading with
OpenCLIP's eval transform (resize the shorter side, center crop, RGB, [0, 1]), by path or by manifest index.

Batches for extraction (`image_batches`) come from PIL in DataLoader workers, or, for JPEGs, from the device:
workers only read the files' bytes, and one batched `decode_jpeg` plus a tensor resize and crop run where the
backbone runs (`activations.decode`). A file the device decoder does not take (not a JPEG, CMYK, arithmetic or
lossless coding) is decoded by PIL in the worker; one it refuses is decoded by PIL in the main process."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cafe.errors import CafeError
from cafe.io import file_hash
from cafe.io.features import FeatureFile
from cafe.io.manifest import read_manifest

# torch, torchvision and pandas load only when images are listed or read: cafe.params reads this module's names
# (DECODERS) without them, and steps that read CSVs start fast
if TYPE_CHECKING:
    import pandas as pd
    import torch

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
ImageLoader = Callable[[np.ndarray], "torch.Tensor"]  # manifest indices -> (B, 3, H, W) in [0, 1]
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}  # where a truncated file ends without them
TAIL_BYTES = 4096  # the end marker is looked for this far from the end (valid files may carry trailing bytes)
DECODERS = ("auto", "cpu", "device")  # activations.decode: where JPEGs are decoded (auto: the device on CUDA)
JPEG_EXTENSIONS = (".jpeg", ".jpg")
DEVICE_FRAMES = (0xC0, 0xC1, 0xC2)  # JPEG frames the device decodes: baseline, extended, progressive (Huffman)
FRAMES = (*DEVICE_FRAMES, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)  # every SOFn marker
Batch = tuple["torch.Tensor", "torch.Tensor"]  # manifest indices (B,), images (B, 3, size, size) in [0, 1]


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
    import pandas as pd

    return pd.DataFrame(sorted(rows), columns=["path", "class"])


def _images_in(root: Path, name: str) -> list[str]:
    """Posix paths (relative to root) of the image files under one class folder."""
    found = []
    for folder, dirs, files in os.walk(root / name, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root)
        found += [(rel / f).as_posix() for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


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
    return bad[["path", "class", "reason"]].reset_index(drop=True)


@dataclass(frozen=True)
class Crop:
    """A model's eval crop: the image resized (bicubic), then the center `size` x `size`. `resize` an int: the
    shorter side to it, keeping the aspect (timm's crop_pct < 1, a Hugging Face processor's shortest_edge >
    crop_size); a (height, width) pair: to exactly that, squashed (a Hugging Face SigLIP processor, timm's
    crop_mode squash), torchvision's `Resize` convention. A plain int size is Crop(n, n)."""

    size: int
    resize: int | tuple[int, int]

    def __post_init__(self) -> None:  # a list from JSON or a config is the same pair
        if not isinstance(self.resize, int):
            object.__setattr__(self, "resize", tuple(int(side) for side in self.resize))

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of an image of that size after the resize (torchvision's rounding of the longer side)."""
        if not isinstance(self.resize, int):
            return self.resize
        long_side = int(self.resize * max(height, width) / min(height, width))
        return (long_side, self.resize) if width <= height else (self.resize, long_side)

    def scaled(self, size: int) -> Crop:
        """The same region of the image at another input size: the resize scaled by size / self.size (rounded)."""
        scale = size / self.size
        if isinstance(self.resize, int):
            return Crop(size, round(self.resize * scale))
        return Crop(size, tuple(round(side * scale) for side in self.resize))


ImageSize = int | Crop  # what every loader below takes as `size`


def crop_of(size: ImageSize) -> Crop:
    return size if isinstance(size, Crop) else Crop(size, size)


def eval_transform(size: ImageSize) -> Callable[[Image.Image], torch.Tensor]:
    """OpenCLIP's eval transform without normalisation: the crop's resize (bicubic; the shorter side, or squashed
    to a (height, width) pair), center crop."""
    from torchvision import transforms

    crop = crop_of(size)
    return transforms.Compose(
        [
            transforms.Resize(crop.resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(crop.size),
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


def _unreadable(path: str | os.PathLike, exc: Exception) -> CafeError:
    return CafeError(f"{path}: cannot read image ({exc}); remove or replace the file")


def load_image(path: str | os.PathLike, transform: Callable[[Image.Image], Any]) -> torch.Tensor:
    """One image as RGB (3, size, size) in [0, 1]; a file PIL cannot decode is a CafeError naming it."""
    try:
        with Image.open(path) as image:
            return transform(to_rgb(image))
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's decoders raise all three for broken files
        raise _unreadable(path, exc) from exc


def read_bytes(path: str | os.PathLike) -> bytearray:
    """A file's bytes (writable, so a tensor can share them); an unreadable file is the CafeError of `load_image`."""
    try:
        with open(path, "rb") as handle:
            return bytearray(handle.read())
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def load_images(root: str | os.PathLike, paths: list[str], size: ImageSize) -> torch.Tensor:
    """Images at `root/path` as one float batch (B, 3, size, size) in [0, 1]."""
    import torch

    transform = eval_transform(size)
    return torch.stack([load_image(Path(root) / p, transform) for p in paths])


class ManifestImages:
    """Rows of a manifest as (manifest index, image) pairs: a map-style dataset for a DataLoader."""

    def __init__(self, root: str | os.PathLike, rows: pd.DataFrame, size: ImageSize):
        self.root, self.transform = Path(root), eval_transform(size)
        self.indices, self.paths = rows["index"].to_numpy(), rows["path"].tolist()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return int(self.indices[i]), load_image(self.root / self.paths[i], self.transform)


def image_batches(
    root: str | os.PathLike,
    rows: pd.DataFrame,
    size: ImageSize,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    decode_on: torch.device | None = None,
) -> Iterable[Batch]:
    """Batches of (manifest indices (B,), images (B, 3, size, size)) in manifest order: decoded by PIL in the
    workers, or with `decode_on`, JPEGs decoded and resized on that device (images there too)."""
    from torch.utils.data import DataLoader

    if decode_on is None:
        dataset = ManifestImages(root, rows, size)
        return DataLoader(dataset, batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
    files = DataLoader(
        ManifestFiles(root, rows, size), batch_size, shuffle=False, num_workers=num_workers, collate_fn=_file_batch
    )
    return _decoded(files, size, decode_on)


def decode_device(mode: str, device: torch.device, paths: Iterable[str]) -> torch.device | None:
    """Where `activations.decode` decodes JPEGs: the backbone's device for 'device', and for 'auto' when that is
    CUDA and the manifest names JPEG files; None (PIL in the DataLoader workers) otherwise, or when torchvision
    cannot decode there ('auto' says so and uses PIL; 'device' is an error)."""
    jpegs = any(str(p).lower().endswith(JPEG_EXTENSIONS) for p in paths)
    if not (mode == "device" or (mode == "auto" and device.type == "cuda" and jpegs)):
        return None
    problem = _decoder_problem(device)
    if problem is None:
        return device
    if mode == "device":
        raise CafeError(f"activations.decode: torchvision cannot decode JPEGs on {device} ({problem}); set it to cpu")
    log.warning("torchvision cannot decode JPEGs on %s (%s): PIL decodes them", device, problem)
    return None


def _decoder_problem(device: torch.device) -> str | None:
    """Why torchvision cannot decode a JPEG on `device` (a build without nvJPEG, say), or None."""
    import io

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    probe = io.BytesIO()
    Image.new("RGB", (16, 16)).save(probe, "JPEG")
    try:
        decode_jpeg(
            [torch.frombuffer(bytearray(probe.getvalue()), dtype=torch.uint8)], ImageReadMode.RGB, device=device
        )
    except RuntimeError as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def jpeg_frame(data: bytes | bytearray) -> tuple[int, int] | None:
    """(SOFn marker, colour components) from a JPEG's frame header; None when the bytes are not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 < len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
        elif marker in FRAMES:
            return marker, data[at + 9]  # FF Cn, length (2), precision (1), height (2), width (2), components
        else:
            at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def device_decodes(data: bytes | bytearray) -> bool:
    """Whether the device decoder takes the file: a Huffman-coded JPEG, gray or 3-component (not CMYK/YCCK, whose
    colour conversion stays PIL's)."""
    frame = jpeg_frame(data)
    return frame is not None and frame[0] in DEVICE_FRAMES and frame[1] in (1, 3)


class ManifestFiles(ManifestImages):
    """Rows of a manifest as (manifest index, path, payload): a JPEG the device decodes as its raw bytes (uint8,
    1-D), any other image decoded here by PIL (float (3, size, size))."""

    def __getitem__(self, i: int) -> tuple[int, str, torch.Tensor]:
        import torch

        path = self.root / self.paths[i]
        data = read_bytes(path)
        payload = (
            torch.frombuffer(data, dtype=torch.uint8) if device_decodes(data) else load_image(path, self.transform)
        )
        return int(self.indices[i]), str(path), payload


def _file_batch(items: list[tuple[int, str, torch.Tensor]]) -> tuple[torch.Tensor, list[str], list[torch.Tensor]]:
    """DataLoader collate of ManifestFiles items: indices (B,), paths and payloads as lists (sizes differ)."""
    import torch

    indices, paths, payloads = zip(*items)
    return torch.tensor(indices), list(paths), list(payloads)


def _decoded(
    files: Iterable[tuple[torch.Tensor, list[str], list[torch.Tensor]]], size: ImageSize, device: torch.device
) -> Iterator[Batch]:
    """The file batches with their images decoded on `device`."""
    for indices, paths, payloads in files:
        yield indices, decode_batch(paths, payloads, size, device)


def decode_batch(paths: list[str], payloads: list[torch.Tensor], size: ImageSize, device: torch.device) -> torch.Tensor:
    """Images (B, 3, size, size) in [0, 1] on `device` from ManifestFiles payloads: the JPEG bytes decoded there
    in one batched call, resized and cropped there; images PIL already decoded are moved there."""
    import torch

    jpegs = [i for i, payload in enumerate(payloads) if payload.dtype == torch.uint8]
    decoded = dict(zip(jpegs, _decode_jpegs([payloads[i] for i in jpegs], [paths[i] for i in jpegs], size, device)))
    return torch.stack([decoded[i] if i in decoded else p.to(device) for i, p in enumerate(payloads)])


def _decode_jpegs(
    data: list[torch.Tensor], paths: list[str], size: ImageSize, device: torch.device
) -> list[torch.Tensor]:
    """One batched decode on `device`; if the decoder refuses the batch, each file on its own."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not data:
        return []
    try:
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return [_decode_jpeg(one, path, size, device) for one, path in zip(data, paths)]
    return [resize_crop(image, size) for image in images]


def _decode_jpeg(data: torch.Tensor, path: str, size: ImageSize, device: torch.device) -> torch.Tensor:
    """One JPEG decoded on `device`, or by PIL when the device decoder refuses it (a broken file is PIL's
    CafeError)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        image = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        log.warning("%s: the JPEG decoder on %s refused it (%s); decoding it with PIL", path, device, exc)
        return load_image(path, eval_transform(size)).to(device)
    return resize_crop(image, size)


def resize_crop(image: torch.Tensor, size: ImageSize) -> torch.Tensor:
    """`eval_transform` on a decoded uint8 image (3, h, w), on its device: the crop's resize (bicubic,
    antialiased) in PIL's two passes, width then height, each rounded to uint8 (as Pillow <= 12 and torchvision's
    CPU kernel do, so every device computes the same), then the center crop, as float in [0, 1]."""
    from torchvision.transforms.v2 import functional as F

    crop = crop_of(size)
    height, width = image.shape[-2:]
    out_height, out_width = crop.resized(height, width)
    for shape in ([height, out_width], [out_height, out_width]):
        image = F.resize(image, shape, interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    return F.center_crop(image, [crop.size]).float().div_(255)


def manifest_loader(manifest: str, root: str, size: ImageSize, ff: FeatureFile) -> ImageLoader:
    """A function from manifest indices to images (B, 3, size, size) in [0, 1]; checks the features' indices exist."""
    if ff.manifest_hash and ff.manifest_hash != file_hash(manifest):
        raise CafeError(f"{ff.path}: found on another manifest than {manifest}; re-run the features step")
    frame = read_manifest(manifest)
    paths = dict(zip(frame["index"].tolist(), frame["path"]))
    missing = sorted(set(np.unique(ff.image[ff.image >= 0]).tolist()) - set(paths))
    if missing:
        raise CafeError(f"{ff.path}: image indices {missing[:5]} are not in {manifest}; the manifest changed since")
    return lambda indices: load_images(root, [paths[i] for i in indices.tolist()], size)
