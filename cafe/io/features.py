"""The features file (`results/features/layer{L}.h5`): the top activations of the first N features of one layer's
SAE, written by the features step and read by the ERF, insertion, annotation and ground-truth steps.

results/features/layer{L}.h5 (read by the ERF, insertion, annotation and ground-truth steps):

    feature          (N,) int64        feature ids 0..N-1 (Matryoshka puts the coarse concepts first)
    image            (N, K) int64      manifest index, -1 where a feature is active on fewer than K images
    analysis_row     (N, K) int64      row in the activation file's `analysis` dataset (-1 likewise)
    token            (N, K) int64      argmax token in that image (a position of the token layout, never a register)
    value            (N, K) float32    the activation there (0 where no image)
    act_map          (N, K, T) float32 the feature's activation at every token of that image
    max_value        (N,) float32      the feature's maximum over all analysis tokens
    n_active_images  (N,) int64        analysis images where the feature fires at any token
    cls_only         (N,) bool         fires on the CLS token of some image and never on a patch token

Attributes: layer, grid, n_tokens, has_cls, n_registers (the `cafe.tokens.TokenLayout`; files without the last
two are CLS + patches), top_k, sae_fingerprint, backbone, manifest_hash.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from cafe.errors import CafeError
from cafe.io.atomic import atomic_path, open_h5
from cafe.tokens import TokenLayout

FEATURE_DATASETS = ("feature", "image", "token", "value", "act_map", "max_value", "cls_only")


@dataclass(frozen=True)
class FeatureFile:
    """The top activations of one layer (results/features/layer{L}.h5), fully in memory."""

    path: str
    layer: int
    grid: int
    sae_fingerprint: str
    manifest_hash: str
    feature: np.ndarray  # (N,)
    image: np.ndarray  # (N, K) manifest index, -1 = no target
    token: np.ndarray  # (N, K)
    value: np.ndarray  # (N, K)
    act_map: np.ndarray  # (N, K, T)
    max_value: np.ndarray  # (N,)
    cls_only: np.ndarray  # (N,) fires on CLS tokens only
    layout: TokenLayout | None = None  # None: CLS + the grid (files written before layouts were recorded)

    def __post_init__(self) -> None:
        if self.layout is None:
            object.__setattr__(self, "layout", TokenLayout(self.grid))


def write_features(path: str | os.PathLike, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Write a features file atomically: the datasets above and their attributes."""
    import h5py  # here: modules that only name FeatureFile (cafe.images, for the DAG's params) skip it

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        for name, array in arrays.items():
            handle.create_dataset(name, data=array)
        handle.attrs.update(attrs)


def read_features(path: str | os.PathLike, layer: int, layout: TokenLayout | int | None = None) -> FeatureFile:
    """Load a features file and check it belongs to this layer and (if given, the backbone's) token layout (or
    patch grid, CLS first)."""
    with open_h5(path, FEATURE_DATASETS) as h5:
        data = {name: h5[name][()] for name in FEATURE_DATASETS}
        attrs = dict(h5.attrs)
    ff = FeatureFile(
        str(path),
        int(attrs.get("layer", -1)),
        int(attrs.get("grid", -1)),
        str(attrs.get("sae_fingerprint", "")),
        str(attrs.get("manifest_hash", "")),
        **data,
        layout=TokenLayout.from_attrs(attrs, str(path)) if "grid" in attrs else None,
    )
    if ff.layer != layer:
        raise CafeError(f"{path}: features of layer {ff.layer}, but layer {layer} was asked for")
    layout = TokenLayout(layout) if isinstance(layout, int) else layout or ff.layout
    if ff.layout != layout or ff.act_map.shape[-1] != layout.n_tokens:
        raise CafeError(
            f"{path}: {ff.layout} with {ff.act_map.shape[-1]} tokens does not match the backbone's {layout}"
        )
    if not (
        ff.image.shape == ff.token.shape == ff.value.shape == ff.act_map.shape[:2]
        and ff.image.shape[0] == len(ff.feature) == len(ff.max_value) == len(ff.cls_only)
    ):
        raise CafeError(f"{path}: datasets disagree in shape ({ {k: v.shape for k, v in data.items()} })")
    return ff
