"""One layer's first N features with their top targets: activation maps (features step) beside ERF maps (erf step)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cafe.tokens import token_grid
from cafe.errors import CafeError
from cafe.io import open_h5

FEATURE_DATASETS = ("feature", "image", "token", "value", "act_map", "max_value", "cls_only")


@dataclass(frozen=True)
class LayerTargets:
    """Row n is feature `feature[n]`; column k its k-th top target (image -1 = none). Maps are (N, K, grid, grid)."""

    layer: int
    grid: int
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
    def valid(self) -> np.ndarray:
        """(N, K) mask of targets that exist and have a finite ERF."""
        return (self.image >= 0) & np.isfinite(self.erf).all(axis=(-2, -1))


def _check(f: h5py.File, e: h5py.File, layer: int, n_features: int) -> None:
    """The features and ERF files are of `layer`, of one SAE, of the same targets, and hold enough features."""
    if f["feature"].shape[0] < n_features:
        raise CafeError(f"{f.filename}: holds {f['feature'].shape[0]} features, annotation.n_features is {n_features}")
    if e["maps"].shape[:2] != f["image"].shape:
        shapes = f"maps {e['maps'].shape[:2]}, targets {f['image'].shape}"
        raise CafeError(f"{e.filename} does not match {f.filename} ({shapes}): re-run the erf step")
    for handle in (f, e):
        if int(handle.attrs["layer"]) != layer:
            raise CafeError(f"{handle.filename}: holds layer {handle.attrs['layer']}, not the requested layer {layer}")
    fingerprint = f.attrs["sae_fingerprint"]
    if e.attrs.get("sae_fingerprint", fingerprint) != fingerprint:
        raise CafeError(f"{e.filename}: made for SAE {e.attrs['sae_fingerprint']}, the features for {fingerprint}: "
                        "re-run the erf step")


def read_layer(features_path: str | Path, erf_path: str | Path, layer: int, n_features: int) -> LayerTargets:
    """Read the first `n_features` features of `layer` and their ERF maps, checking that both files agree."""
    with open_h5(features_path, FEATURE_DATASETS) as f, open_h5(erf_path, ("maps",)) as e:
        _check(f, e, layer, n_features)
        grid, first = int(f.attrs["grid"]), slice(n_features)
        return LayerTargets(
            layer=layer,
            grid=grid,
            fingerprint=str(f.attrs["sae_fingerprint"]),
            method=str(e.attrs["method"]),
            feature=f["feature"][first].astype(int),
            image=f["image"][first].astype(int),
            token=f["token"][first].astype(int),
            value=f["value"][first].astype(np.float32),
            act=token_grid(f["act_map"][first], grid),
            erf=e["maps"][first].astype(np.float32),
            max_value=f["max_value"][first].astype(np.float32),
            cls_only=f["cls_only"][first].astype(bool),
        )
