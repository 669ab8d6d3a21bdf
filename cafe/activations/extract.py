"""One forward pass per image batch through blocks 1..max(layers) writes the residual stream of every requested
layer: the train images' tokens (all, or a seeded subsample per image) and all tokens of the analysis images.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cafe.backbone import Backbone
from cafe.errors import CafeError
from cafe.images import image_batches
from cafe.io import atomic_path, file_hash
from cafe.io.activations import LayerInfo, LayerWriter, layer_path
from cafe.io.manifest import read_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivationsConfig:
    """Extraction parameters (params.yaml `activations:`)."""

    batch_size: int = 64
    tokens_per_image: int | None = None  # train tokens kept per image: None = all, else a seeded subsample
    seed: int = 0  # seeds the per-image token subsample
    num_workers: int = 0  # image-decoding worker processes

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise CafeError(f"params: activations.batch_size must be >= 1, got {self.batch_size}")
        if self.tokens_per_image is not None and self.tokens_per_image < 1:
            raise CafeError(f"params: activations.tokens_per_image must be null or >= 1, got {self.tokens_per_image}")


def token_subsample(image: int, n_tokens: int, keep: int, seed: int) -> np.ndarray:
    """The sorted tokens kept for one train image, seeded by (seed, manifest index): order-independent."""
    if keep >= n_tokens:
        return np.arange(n_tokens)
    return np.sort(np.random.default_rng([seed, image]).choice(n_tokens, keep, replace=False))


def _tokens_per_image(config: ActivationsConfig, n_tokens: int) -> int:
    keep = config.tokens_per_image or n_tokens
    if keep > n_tokens:
        raise CafeError(f"params: activations.tokens_per_image = {keep} exceeds the {n_tokens} tokens per image")
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


def _to_half(resid: torch.Tensor, layer: int) -> np.ndarray:
    """float16 on the CPU; a value beyond float16's range is an error, not a silent inf."""
    half = resid.to(torch.float16)
    if not torch.isfinite(half).all():
        raise CafeError(
            f"activations: layer {layer} has values beyond float16 range "
            f"(max |h| = {resid.abs().max().item():.3g}); cannot store them as float16"
        )
    return half.cpu().numpy()


def _run_split(
    backbone: Backbone,
    rows: pd.DataFrame,
    images_root: Path,
    layers: list[int],
    config: ActivationsConfig,
    write: Callable[[np.ndarray, dict[int, torch.Tensor]], None],
) -> None:
    """Forward every image of one split once; `write(indices, {layer: residual (B, T, D)})` stores them."""
    loader = image_batches(
        images_root,
        rows,
        backbone.image_size,
        config.batch_size,
        config.num_workers,
        pin_memory=backbone.device.type == "cuda",
    )
    start, split = time.perf_counter(), rows["split"].iloc[0]
    with torch.inference_mode(), tqdm(total=len(rows), desc=f"activations {split}", unit="img") as bar:
        for indices, images in loader:
            write(indices.numpy(), backbone.forward_layers(backbone.normalize(images), layers))
            bar.update(len(indices))
    seconds = time.perf_counter() - start
    log.info("%s: %d images in %.1f s (%.1f images/s)", split, len(rows), seconds, len(rows) / max(seconds, 1e-9))


def _open_writers(
    stack: contextlib.ExitStack,
    backbone: Backbone,
    layers: list[int],
    out_dir: Path,
    keep: int,
    manifest_hash: str,
    n_train: int,
    n_analysis: int,
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
        )
        writers[layer] = LayerWriter(handle, info, n_train, n_analysis)
    return writers


class _Sink:
    """Routes each batch's residuals to the layer writers: a token subsample for train, all for analysis."""

    def __init__(self, writers: dict[int, LayerWriter], n_tokens: int, keep: int, seed: int):
        self.writers, self.n_tokens, self.keep, self.seed = writers, n_tokens, keep, seed

    def train(self, images: np.ndarray, resid: dict[int, torch.Tensor]) -> None:
        tokens = np.stack([token_subsample(int(i), self.n_tokens, self.keep, self.seed) for i in images])
        for layer, h in resid.items():
            picked = torch.from_numpy(tokens).to(h.device)
            rows = torch.arange(len(images), device=h.device)[:, None]
            self.writers[layer].add_train(images, tokens, _to_half(h[rows, picked], layer))

    def analysis(self, images: np.ndarray, resid: dict[int, torch.Tensor]) -> None:
        for layer, h in resid.items():
            self.writers[layer].add_analysis(images, _to_half(h, layer))


def extract(
    backbone: Backbone,
    manifest_path: str | os.PathLike,
    images_root: str | os.PathLike,
    layers: list[int],
    out_dir: str | os.PathLike,
    config: ActivationsConfig,
) -> list[Path]:
    """Write `layer{L}.h5` for every requested layer from one truncated forward pass per batch."""
    layers, out_dir = sorted(set(layers)), Path(out_dir)
    for layer in layers:
        backbone.check_layer(layer)
    train, analysis = read_manifest(manifest_path, "train"), read_manifest(manifest_path, "analysis")
    if train.empty or analysis.empty:
        raise CafeError(
            f"{manifest_path}: the manifest needs train and analysis images "
            f"(has {len(train)} train, {len(analysis)} analysis)"
        )
    keep = _tokens_per_image(config, backbone.n_tokens)
    n_values = len(train) * keep + len(analysis) * backbone.n_tokens
    _check_disk(out_dir, len(layers) * n_values * backbone.width * 2)
    with contextlib.ExitStack() as stack:
        writers = _open_writers(
            stack, backbone, layers, out_dir, keep, file_hash(manifest_path), len(train), len(analysis)
        )
        sink = _Sink(writers, backbone.n_tokens, keep, config.seed)
        _run_split(backbone, train, Path(images_root), layers, config, sink.train)
        _run_split(backbone, analysis, Path(images_root), layers, config, sink.analysis)
        for writer in writers.values():
            writer.finish()
    return [layer_path(out_dir, layer) for layer in layers]
