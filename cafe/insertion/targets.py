"""Which targets are tested, and the score maps that rank their patches, read from the features and ERF files."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np

from cafe.errors import CafeError
from cafe.io import open_h5

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


@dataclass(frozen=True)
class Targets:
    """Parallel arrays, one entry per target (feature row n, rank k of its top images)."""

    row: np.ndarray
    rank: np.ndarray
    feature: np.ndarray
    image: np.ndarray
    token: np.ndarray
    value: np.ndarray
    max_value: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def take(self, index: np.ndarray | slice) -> Targets:
        """The targets at `index`."""
        return Targets(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def read_features(path: str | os.PathLike, layer: int, grid: int | None = None) -> FeatureFile:
    """Load a features file and check it belongs to this layer and (if given, the backbone's) patch grid."""
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
    )
    if ff.layer != layer:
        raise CafeError(f"{path}: features of layer {ff.layer}, but layer {layer} was asked for")
    grid = ff.grid if grid is None else grid
    if ff.grid != grid or ff.act_map.shape[-1] != 1 + grid * grid:
        raise CafeError(
            f"{path}: grid {ff.grid} with {ff.act_map.shape[-1]} tokens does not match a {grid}x{grid} grid"
        )
    if not (
        ff.image.shape == ff.token.shape == ff.value.shape == ff.act_map.shape[:2]
        and ff.image.shape[0] == len(ff.feature) == len(ff.max_value) == len(ff.cls_only)
    ):
        raise CafeError(f"{path}: datasets disagree in shape ({ {k: v.shape for k, v in data.items()} })")
    return ff


def select_targets(ff: FeatureFile, min_activation: float) -> Targets:
    """Targets that exist and are clearly active: value >= min_activation x the feature's max (and > 0)."""
    threshold = min_activation * ff.max_value[:, None]
    row, rank = np.nonzero((ff.image >= 0) & (ff.value > 0) & (ff.value >= threshold))
    return Targets(
        row, rank, ff.feature[row], ff.image[row, rank], ff.token[row, rank], ff.value[row, rank], ff.max_value[row]
    )


def sample_targets(targets: Targets, n: int | None, layer: int) -> Targets:
    """The first n targets of a seeded shuffle (all if n is None): nested, so the greedy subset lies inside the
    tested one."""
    if n is None:
        return targets
    order = np.random.default_rng([layer]).permutation(len(targets))
    return targets.take(np.sort(order[:n]))


def activation_scores(ff: FeatureFile, targets: Targets) -> np.ndarray:
    """The feature's activation over patch tokens (CLS dropped), (C, P): the naive baseline ranking."""
    return ff.act_map[targets.row, targets.rank, 1:]


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


def erf_scores(maps: np.ndarray, targets: Targets) -> np.ndarray:
    """The targets' ERF maps flattened row-major to (C, P), like the patch tokens."""
    return maps[targets.row, targets.rank].reshape(len(targets), maps.shape[-2] * maps.shape[-1])  # also when empty
