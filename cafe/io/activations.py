"""The on-disk layout of one layer's activations (`results/activations/layer{L}.h5`), its writer and guarded reader.

    train           (n_train_tokens, D) float16  residual tokens of the train images, flattened; chunks of
                                                 contiguous rows (the SAE streams random chunks)
    train_image     (n_train_tokens,) int64      manifest index of each row's image
    train_token     (n_train_tokens,) int16      token of each row, a position of the token layout (cafe.tokens:
                                                 [CLS] [registers] patches row-major; never a register)
    analysis        (n_analysis, T, D) float16   every token of each analysis image; chunks of whole images
    analysis_image  (n_analysis,) int64          manifest index of each analysis row

Attributes: backbone, pretrained, layer, image_size, patch_size, grid, n_tokens, width, manifest_hash,
tokens_per_image, skipped_images, has_cls and n_registers (with grid: the `TokenLayout`; files without them
are CLS + patches) (unreadable images the manifest step left out), content_hash (sha256 of the
token bytes as written), and `complete` = 1, written last.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from cafe.errors import CafeError
from cafe.io.atomic import open_h5

CHUNK_BYTES = 1 << 20  # about 1 MiB per HDF5 chunk: large sequential reads, small enough to shuffle well
DATASETS = ("train", "train_image", "train_token", "analysis", "analysis_image")


@dataclass(frozen=True)
class LayerInfo:
    """What a layer file holds, stored as its HDF5 attributes."""

    backbone: str
    pretrained: str
    layer: int
    image_size: int
    patch_size: int
    grid: int
    n_tokens: int
    width: int
    manifest_hash: str
    tokens_per_image: int
    skipped_images: int = 0
    has_cls: int = 1  # the token layout (cafe.tokens.TokenLayout) with grid and n_registers
    n_registers: int = 0


def layer_path(out_dir: str | os.PathLike, layer: int) -> Path:
    """Where the activations of one layer live."""
    return Path(out_dir) / f"layer{layer}.h5"


def chunk_rows(n_rows: int, row_bytes: int) -> int:
    """Rows per HDF5 chunk so that a chunk is about CHUNK_BYTES."""
    return int(min(max(1, n_rows), max(1, CHUNK_BYTES // row_bytes)))


class LayerWriter:
    """Fills one open (temporary) HDF5 file in the layout above; `finish` marks it complete."""

    def __init__(self, handle: h5py.File, info: LayerInfo, n_train_images: int, n_analysis: int):
        self.handle, self.info = handle, info
        T, D = info.n_tokens, info.width
        n_train = n_train_images * info.tokens_per_image
        chunks = (chunk_rows(n_train, 2 * D), D) if n_train else None  # none when no train tokens (imported SAEs)
        handle.create_dataset("train", (n_train, D), np.float16, chunks=chunks)
        handle.create_dataset("train_image", (n_train,), np.int64)
        handle.create_dataset("train_token", (n_train,), np.int16)
        handle.create_dataset(
            "analysis", (n_analysis, T, D), np.float16, chunks=(chunk_rows(n_analysis, 2 * T * D), T, D)
        )
        handle.create_dataset("analysis_image", (n_analysis,), np.int64)
        self.filled = {"train": 0, "analysis": 0}
        self.digest = hashlib.sha256()

    def add_train(self, images: np.ndarray, tokens: np.ndarray, values: np.ndarray) -> None:
        """Append the chosen tokens (B, k) of B train images, values (B, k, D)."""
        k = tokens.shape[1]
        rows = self._claim("train", values.shape[0] * k)
        self._put("train", rows, values.reshape(-1, values.shape[-1]))
        self.handle["train_image"][rows] = np.repeat(images, k)
        self.handle["train_token"][rows] = tokens.reshape(-1)

    def add_analysis(self, images: np.ndarray, values: np.ndarray) -> None:
        """Append B analysis images with all their tokens, values (B, T, D)."""
        rows = self._claim("analysis", values.shape[0])
        self._put("analysis", rows, values)
        self.handle["analysis_image"][rows] = images

    def _claim(self, name: str, n: int) -> slice:
        start = self.filled[name]
        if start + n > len(self.handle[name]):
            raise ValueError(f"{name}: {start + n} rows written into a dataset of {len(self.handle[name])}")
        self.filled[name] = start + n
        return slice(start, start + n)

    def _put(self, name: str, rows: slice, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float16)
        self.handle[name][rows] = values
        self.digest.update(values)  # contiguous: hashed in place, no copy

    def finish(self) -> None:
        """Check every row was written, then write the attributes, `complete` last."""
        for name, filled in self.filled.items():
            if filled != len(self.handle[name]):
                raise ValueError(f"{name}: {filled} of {len(self.handle[name])} rows written")
        self.handle.attrs.update(asdict(self.info))
        self.handle.attrs["content_hash"] = self.digest.hexdigest()[:16]
        self.handle.attrs["complete"] = 1


def open_layer(path: str | os.PathLike, width: int | None = None) -> h5py.File:
    """Open a complete layer file read-only; a corrupt, truncated, incomplete or wrong-width file is a CafeError."""
    handle = open_h5(path, DATASETS)
    if int(handle.attrs.get("complete", 0)) != 1:
        handle.close()
        raise CafeError(
            f"{path}: activation file is incomplete (no `complete` mark; the writing run was cut "
            f"off); delete it and re-run the `activations` step"
        )
    if width is not None and int(handle.attrs["width"]) != width:
        got = int(handle.attrs["width"])
        handle.close()
        raise CafeError(f"{path}: activations have width {got}, but {width} was expected (another backbone?)")
    return handle


def layer_attrs(handle: h5py.File) -> dict:
    """The attributes of an open layer file as plain Python values."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in handle.attrs.items()}


def read_rows(dataset: h5py.Dataset, rows: slice | np.ndarray) -> np.ndarray:
    """Read rows (a slice, or increasing indices) of a dataset; an unreadable chunk (a damaged file) is a
    CafeError naming the file."""
    try:
        return dataset[rows]
    except (OSError, ValueError) as exc:
        where = f"{rows.start}:{rows.stop}" if isinstance(rows, slice) else f"rows {rows[0]}..{rows[-1]}"
        raise CafeError(
            f"{dataset.file.filename}: cannot read {dataset.name}[{where}] ({exc}); "
            f"the file is damaged, re-run the `activations` step"
        ) from exc


def iter_analysis(
    path: str | os.PathLike, block_tokens: int, max_tokens: int | None = None, width: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 (b, T, D)) blocks of consecutive analysis images, about `block_tokens` tokens each.

    With `max_tokens`, only that many tokens (rounded up to whole images) are read, as images spread evenly
    over all rows: the manifest is sorted by class folder, so its first rows would be a few classes only.
    Each block is then a sample, and its first row says where it starts."""
    with open_layer(Path(path), width) as handle:
        data = handle["analysis"]
        n_tokens = data.shape[1]
        n_rows = len(data) if max_tokens is None else min(len(data), -(-max_tokens // n_tokens))
        step = max(1, block_tokens // n_tokens)
        if n_rows == len(data):
            for start in range(0, n_rows, step):
                yield start, read_rows(data, slice(start, min(start + step, n_rows))).astype(np.float32)
            return
        rows = np.unique(np.linspace(0, len(data) - 1, n_rows).round().astype(np.int64))
        for start in range(0, len(rows), step):
            block = rows[start : start + step]
            yield int(block[0]), read_rows(data, block).astype(np.float32)
