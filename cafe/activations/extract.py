"""One forward pass per image batch through blocks 1..max(layers) writes the residual stream of every requested
layer: the train images' tokens (all, or a seeded subsample per image) and all tokens of the analysis images.

The feed and the writes stay off the forward's path: JPEGs can be decoded on the backbone's device
(`activations.decode`, cafe.images), and each batch's float16 values go to the host (asynchronously on CUDA) and
into HDF5 on a writer thread (`activations.write_queue` batches may wait for it) while the next batch runs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cafe.activations.config import ActivationsConfig
from cafe.backbone.tower import Backbone
from cafe.compute import precision_scope
from cafe.errors import CafeError
from cafe.images import Batch, Crop, decode_device, image_batches
from cafe.io import atomic_path, file_hash
from cafe.io.activations import LayerInfo, LayerWriter, layer_path
from cafe.io.background import BackgroundWriter
from cafe.io.manifest import read_manifest

log = logging.getLogger(__name__)

FLOAT16_OVERFLOW = 65520.0  # |x| from here on rounds to inf in float16 (its max, 65504, plus half a step)


def token_subsample(image: int, tokens: np.ndarray, keep: int, seed: int) -> np.ndarray:
    """The sorted tokens (of the readable ones, `tokens`) kept for one train image, seeded by (seed, manifest
    index): order-independent."""
    if keep >= len(tokens):
        return tokens
    return tokens[np.sort(np.random.default_rng([seed, image]).choice(len(tokens), keep, replace=False))]


def _tokens_per_image(config: ActivationsConfig, n_tokens: int) -> int:
    keep = config.tokens_per_image or n_tokens
    if keep > n_tokens:
        raise CafeError(
            f"params: activations.tokens_per_image = {keep} exceeds the {n_tokens} tokens per image "
            f"(CLS and patches; registers are never SAE rows)"
        )
    return keep


def _check_disk(out_dir: Path, n_bytes: int) -> None:
    """Log the size the files will take, and stop before the forward passes if the disk cannot hold them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out_dir).free
    log.info("activations will take %.2f GB on disk (%.2f GB free in %s)", n_bytes / 1e9, free / 1e9, out_dir)
    if n_bytes > free:
        raise CafeError(
            f"activations: the layer files need {n_bytes / 1e9:.1f} GB but {out_dir} has "
            f"{free / 1e9:.1f} GB free; lower activations.tokens_per_image, data.n_train or the layers"
        )


@dataclass(frozen=True)
class _Half:
    """One layer's float16 values on their way to the host, with max |h| (the range check) and the event after
    which both are there (None: already there)."""

    values: torch.Tensor
    max_abs: torch.Tensor
    ready: torch.cuda.Event | None


def _start_half(resid: torch.Tensor) -> _Half:
    """Convert to float16 and start the copy to the host; on CUDA nothing waits, so the next forward is queued at
    once."""
    low, high = torch.aminmax(resid)
    half, max_abs = resid.to(torch.float16), torch.maximum(-low, high).float()
    if resid.device.type != "cuda":
        return _Half(half, max_abs, None)
    ready = torch.cuda.Event()
    host = _Half(half.to("cpu", non_blocking=True), max_abs.to("cpu", non_blocking=True), ready)
    ready.record()
    return host


def _host_half(half: _Half, layer: int) -> np.ndarray:
    """The float16 values on the host once copied; a value beyond float16's range is an error, not a silent inf."""
    if half.ready is not None:
        half.ready.synchronize()
    max_abs = float(half.max_abs)
    if not max_abs < FLOAT16_OVERFLOW:  # rounding is monotonic: only the largest |h| can overflow (NaN fails too)
        raise CafeError(
            f"activations: layer {layer} has values beyond float16 range "
            f"(max |h| = {max_abs:.3g}); cannot store them as float16"
        )
    return half.values.numpy()


def _run_split(
    backbone: Backbone,
    rows: pd.DataFrame,
    batches: Iterable[Batch],
    layers: list[int],
    write: Callable[[np.ndarray, dict[int, torch.Tensor]], None],
    precision: str = "fp32",
) -> None:
    """Forward every image batch of one split once, in `precision` (cafe.compute); `write(indices, {layer:
    residual (B, T, D)})` stores them."""
    start, split = time.perf_counter(), rows["split"].iloc[0]
    with torch.inference_mode(), tqdm(total=len(rows), desc=f"activations {split}", unit="img") as bar:
        for indices, images in batches:
            with precision_scope(precision, backbone.device):
                resid = backbone.forward_layers(backbone.normalize(images), layers)
            write(indices.numpy(), resid)
            bar.update(len(indices))
    seconds = time.perf_counter() - start
    log.info("%s: %d images in %.1f s (%.1f images/s)", split, len(rows), seconds, len(rows) / max(seconds, 1e-9))


def _feed(
    backbone: Backbone, images_root: Path, config: ActivationsConfig, paths: pd.Series
) -> Callable[[pd.DataFrame], Iterable[Batch]]:
    """The image batches of a split's rows, decoded where `config.decode` says."""
    device = decode_device(config.decode, backbone.device, paths)
    log.info("JPEGs decoded %s (activations.decode: %s)", f"on {device}" if device else "by PIL", config.decode)
    return functools.partial(
        image_batches,
        images_root,
        size=Crop(backbone.image_size, backbone.resize),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        pin_memory=backbone.device.type == "cuda",
        decode_on=device,
    )


def _open_writers(
    stack: contextlib.ExitStack,
    backbone: Backbone,
    layers: list[int],
    out_dir: Path,
    keep: int,
    manifest_hash: str,
    n_train: int,
    n_analysis: int,
    skipped: int = 0,
) -> dict[int, LayerWriter]:
    """One writer per layer on a temporary file that the stack renames into place only on success."""
    writers = {}
    for layer in layers:
        handle = stack.enter_context(h5py.File(stack.enter_context(atomic_path(layer_path(out_dir, layer))), "w"))
        info = LayerInfo(
            backbone.name,
            backbone.tag,
            layer,
            backbone.image_size,
            backbone.patch_size,
            backbone.grid,
            backbone.n_tokens,
            backbone.width,
            manifest_hash,
            keep,
            skipped,
            int(backbone.layout.has_cls),
            backbone.layout.n_registers,
        )
        writers[layer] = LayerWriter(handle, info, n_train, n_analysis)
    return writers


class _Sink:
    """Routes each batch's residuals to the layer writers through the writer thread: a token subsample for
    train, all tokens for analysis."""

    def __init__(
        self, writers: dict[int, LayerWriter], readable: np.ndarray, keep: int, seed: int, jobs: BackgroundWriter
    ) -> None:
        self.writers, self.readable, self.keep, self.seed, self.jobs = writers, readable, keep, seed, jobs

    def train(self, images: np.ndarray, resid: dict[int, torch.Tensor]) -> None:
        tokens = np.stack([token_subsample(int(i), self.readable, self.keep, self.seed) for i in images])
        device = next(iter(resid.values())).device
        picked = torch.from_numpy(tokens)
        picked = (picked.pin_memory() if device.type == "cuda" else picked).to(device, non_blocking=True)
        rows = torch.arange(len(images), device=device)[:, None]
        halves = {layer: _start_half(h[rows, picked]) for layer, h in resid.items()}
        self.jobs.put(functools.partial(self._write_train, images, tokens, halves))

    def analysis(self, images: np.ndarray, resid: dict[int, torch.Tensor]) -> None:
        halves = {layer: _start_half(h) for layer, h in resid.items()}
        self.jobs.put(functools.partial(self._write_analysis, images, halves))

    def _write_train(self, images: np.ndarray, tokens: np.ndarray, halves: dict[int, _Half]) -> None:
        for layer, half in halves.items():
            self.writers[layer].add_train(images, tokens, _host_half(half, layer))

    def _write_analysis(self, images: np.ndarray, halves: dict[int, _Half]) -> None:
        for layer, half in halves.items():
            self.writers[layer].add_analysis(images, _host_half(half, layer))


def extract(
    backbone: Backbone,
    manifest_path: str | os.PathLike,
    images_root: str | os.PathLike,
    layers: list[int],
    out_dir: str | os.PathLike,
    config: ActivationsConfig,
    precision: str = "fp32",
    skipped: int = 0,
) -> list[Path]:
    """Write `layer{L}.h5` for every requested layer from one truncated forward pass per batch (in `precision`);
    `skipped` (unreadable images the manifest step left out) is recorded in each file's attributes."""
    layers, out_dir = sorted(set(layers)), Path(out_dir)
    for layer in layers:
        backbone.check_layer(layer)
    train, analysis = read_manifest(manifest_path, "train"), read_manifest(manifest_path, "analysis")
    if analysis.empty:
        raise CafeError(f"{manifest_path}: the manifest needs analysis images (has {len(train)} train, none analysis)")
    readable = np.array(backbone.layout.readable())
    keep = _tokens_per_image(config, len(readable))
    n_values = len(train) * keep + len(analysis) * backbone.n_tokens
    _check_disk(out_dir, len(layers) * n_values * backbone.width * 2)
    with contextlib.ExitStack() as stack:
        writers = _open_writers(
            stack, backbone, layers, out_dir, keep, file_hash(manifest_path), len(train), len(analysis), skipped
        )
        jobs = stack.enter_context(BackgroundWriter(config.write_queue, "activations writer"))  # joined first
        sink = _Sink(writers, readable, keep, config.seed, jobs)
        batches = _feed(backbone, Path(images_root), config, pd.concat([train["path"], analysis["path"]]))
        if not train.empty:  # none when the SAEs are imported (data.n_train: 0)
            _run_split(backbone, train, batches(train), layers, sink.train, precision)
        _run_split(backbone, analysis, batches(analysis), layers, sink.analysis, precision)
        jobs.close()
        for writer in writers.values():
            writer.finish()
    return [layer_path(out_dir, layer) for layer in layers]
