"""One layer's first N features with their top targets: activation maps (features step) beside ERF maps (erf step)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cafe.errors import CafeError
from cafe.images import Crop
from cafe.io import open_h5
from cafe.io.erf_maps import read_erf_crop, read_erf_maps
from cafe.io.features import read_features
from cafe.tokens import TokenLayout


@dataclass(frozen=True)
class LayerTargets:
    """Row n is feature `feature[n]`; column k its k-th top target (image -1 = none). Maps are (N, K, grid, grid),
    over the region of each image that `crop` (the model's eval crop) keeps."""

    layer: int
    layout: TokenLayout
    crop: Crop
    fingerprint: str
    method: str
    feature: np.ndarray
    image: np.ndarray
    token: np.ndarray
    value: np.ndarray
    act: np.ndarray
    erf: np.ndarray
    max_value: np.ndarray
    cls_only: np.ndarray

    @property
    def grid(self) -> int:
        return self.layout.grid

    @property
    def valid(self) -> np.ndarray:
        """(N, K) mask of targets that exist and have a finite ERF."""
        return (self.image >= 0) & np.isfinite(self.erf).all(axis=(-2, -1))


def read_layer(features_path: str | Path, erf_path: str | Path, layer: int, n_features: int) -> LayerTargets:
    """Read the first `n_features` features of `layer` and their ERF maps, through the checked readers of the
    insertion step (layer, grid, shapes, and one SAE for both files)."""
    ff = read_features(features_path, layer)
    if len(ff.feature) < n_features:
        raise CafeError(f"{features_path}: holds {len(ff.feature)} features, annotation.n_features is {n_features}")
    maps, first = read_erf_maps(erf_path, None, ff), slice(n_features)
    with open_h5(erf_path, ("maps",)) as h5:
        method = str(h5.attrs["method"])
    return LayerTargets(
        layer=layer,
        layout=ff.layout,
        crop=Crop(*read_erf_crop(erf_path)),
        fingerprint=ff.sae_fingerprint,
        method=method,
        feature=ff.feature[first].astype(int),
        image=ff.image[first].astype(int),
        token=ff.token[first].astype(int),
        value=ff.value[first].astype(np.float32),
        act=ff.layout.token_grid(ff.act_map[first]),
        erf=maps[first].astype(np.float32),
        max_value=ff.max_value[first].astype(np.float32),
        cls_only=ff.cls_only[first].astype(bool),
    )
