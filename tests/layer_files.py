"""Test helper: complete activation files with chosen tokens, written through the real LayerWriter."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from cafe.io.activations import LayerInfo, LayerWriter


def write_layer(path: Path, train: np.ndarray, analysis: np.ndarray, layer: int = 1) -> Path:
    """A layer file whose train tokens are `train` (n, D) and analysis images `analysis` (m, T, D)."""
    n_tokens, width = analysis.shape[1:]
    grid = round((n_tokens - 1) ** 0.5)
    info = LayerInfo("synthetic", "none", layer, 8 * grid, 8, grid, n_tokens, width, "0" * 16, 1)
    with h5py.File(path, "w") as handle:
        writer = LayerWriter(handle, info, len(train), len(analysis))
        writer.add_train(np.arange(len(train)), np.zeros((len(train), 1), np.int16), train[:, None])
        writer.add_analysis(np.arange(len(analysis)) + len(train), analysis)
        writer.finish()
    return path
