"""The ERF file (`results/erf/layer{L}/{method}.h5`): one method's maps for every top activation of one layer,
written by the ERF step and read by the insertion, annotation and ground-truth steps.

results/erf/layer{L}/{method}.h5 (read by the insertion step):

    maps          (N, K, grid, grid) float32  the ERF of target (feature row n, rank k); NaN where no target
    target_value  (N, K) float32              z_k(I, t) recomputed by the method (the stored value for activation)
    absorbed      (N, K) float32              what the map leaves out of the quantity it decomposes (see
                                              cafe.erf.base.Attribution); NaN for saliency and activation

Attributes: method, params (JSON: batch_size, the method's section and, where a tower ran, the precision), layer,
grid, sae_fingerprint, n_targets, targets_per_s (method compute only, image loading excluded), crop (JSON
[input size, resize]: the model's eval crop, `cafe.images.Crop`, the region of each image the maps lie over).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

from cafe.errors import CafeError
from cafe.io.atomic import atomic_path, open_h5
from cafe.io.features import FeatureFile


@dataclass(frozen=True)
class ErfResult:
    """Everything written for one layer x method."""

    maps: np.ndarray
    target_value: np.ndarray
    absorbed: np.ndarray
    targets_per_s: float


def write_erf(
    path: str, method: str, params: dict, ff: FeatureFile, result: ErfResult, crop: tuple[int, int | tuple[int, int]]
) -> None:
    """Write the ERF file atomically; `crop` is the model's (input size, resize), as `cafe.images.Crop` takes them."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("maps", data=result.maps, chunks=(1, *result.maps.shape[1:]), compression="gzip")
        h5.create_dataset("target_value", data=result.target_value)
        h5.create_dataset("absorbed", data=result.absorbed)
        h5.attrs.update(
            method=method,
            params=json.dumps(params, sort_keys=True),
            layer=ff.layer,
            grid=ff.grid,
            sae_fingerprint=ff.sae_fingerprint,
            n_targets=int((ff.image >= 0).sum()),
            targets_per_s=float(result.targets_per_s),
            crop=json.dumps(list(crop)),
        )


def read_erf_maps(path: str | os.PathLike, method: str | None, ff: FeatureFile) -> np.ndarray:
    """ERF maps (N, K, grid, grid) of one method (None: any), after checking they belong to this method, layer and
    features file."""
    with open_h5(path, ("maps",)) as h5:
        file_method, file_layer = str(h5.attrs.get("method", "")), int(h5.attrs.get("layer", -1))
        shape = h5["maps"].shape
        if method is not None and file_method != method:
            raise CafeError(f"{path}: ERF maps of method {file_method!r}, but --method is {method!r}")
        if file_layer != ff.layer:
            raise CafeError(f"{path}: ERF maps of layer {file_layer}, but {ff.path} is layer {ff.layer}")
        file_sae = str(h5.attrs.get("sae_fingerprint", ff.sae_fingerprint))
        if file_sae != ff.sae_fingerprint:
            raise CafeError(
                f"{path}: ERF maps of SAE {file_sae}, but {ff.path} is of SAE {ff.sae_fingerprint}; "
                f"re-run the `erf` step"
            )
        expected = (*ff.image.shape, ff.grid, ff.grid)
        if shape != expected:
            raise CafeError(f"{path}: maps have shape {shape}, expected {expected} from {ff.path}")
        return h5["maps"][()]


def read_erf_crop(path: str | os.PathLike) -> tuple[int, int | list[int]]:
    """The model's eval crop the maps lie over: (input size, resize: the shorter side or a [height, width] pair)."""
    with open_h5(path, ("maps",)) as h5:
        crop = h5.attrs.get("crop")
    if crop is None:
        raise CafeError(f"{path}: records no crop (the model's input region); re-run the `erf` step")
    size, resize = json.loads(crop)
    return int(size), resize
