"""`cafe erf`: ERF maps of one method for every top activation of one layer, written as the ERF contract
(`cafe.io.erf_maps`).
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from tqdm import tqdm

from cafe.backbone import BackboneConfig, tower_shape
from cafe.backbone.tower import Backbone
from cafe.compute import add_precision_argument, precision_scope
from cafe.config import as_dict, parse_section
from cafe.erf.base import ErfMethod
from cafe.erf.config import ErfConfig
from cafe.erf.registry import METHODS, make_method
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget
from cafe.images import Crop, ImageLoader, manifest_loader
from cafe.io.erf_maps import ErfResult, write_erf
from cafe.io.features import FeatureFile, read_features
from cafe.sae.model import check_sae, load_sae

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe erf`."""
    p = subparsers.add_parser(
        "erf",
        help="ERF maps of one method for the top activations of one layer",
        description="Attribute each top activation z_k(I, t) of a layer to the image patches.",
    )
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument("--params", default="{}", help="the params.yaml `erf` section as JSON")
    p.add_argument("--backbone", required=True, help="the params.yaml `backbone` section as JSON")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--features", required=True, help="results/features/layer{L}.h5")
    p.add_argument("--sae", help="results/sae/layer{L}.pt (not needed by activation)")
    p.add_argument("--manifest", help="results/data/manifest.csv (not needed by activation)")
    p.add_argument("--images-root", help="root the manifest's paths are relative to (not needed by activation)")
    p.add_argument("--out", required=True, help="results/erf/layer{L}/{method}.h5")
    add_precision_argument(p)
    p.set_defaults(func=run_erf)


def run_erf(args: argparse.Namespace) -> None:
    """Check the inputs, compute the maps (activation: read them off the features file), write the HDF5 file."""
    config = parse_section(ErfConfig, args.params, "erf")
    backbone_cfg = parse_section(BackboneConfig, args.backbone, "backbone")
    shape = tower_shape(backbone_cfg)
    ff = read_features(args.features, args.layer, shape.layout)
    if args.method == "activation":
        result = activation_result(ff)
    else:
        missing = [
            f"--{name.replace('_', '-')}" for name in ("sae", "manifest", "images_root") if not getattr(args, name)
        ]
        if missing:
            raise CafeError(f"erf: method {args.method!r} needs {', '.join(missing)}")
        load = manifest_loader(args.manifest, args.images_root, Crop(shape.image_size, shape.resize), ff)
        backbone = Backbone.load(backbone_cfg)
        sae, meta = load_sae(args.sae, backbone.device)
        check_sae(meta, ff, args.sae)
        method = make_method(args.method, FeatureTarget(backbone, sae, ff.layer), config)
        result = compute_erf(method, ff, load, config.batch_size, args.precision)
    params = method_params(config, args.method)
    if args.method != "activation":  # read off the features file: no forward, no precision
        params["precision"] = args.precision
    write_erf(args.out, args.method, params, ff, result, (shape.image_size, shape.resize))
    log.info("wrote %s (%.3g targets/s)", args.out, result.targets_per_s)


def method_params(config: ErfConfig, method: str) -> dict:
    """The parameters a method's maps depend on."""
    section = getattr(config, method, None)
    return {"batch_size": config.batch_size, **({method: as_dict(section)} if section is not None else {})}


def compute_erf(
    method: ErfMethod, ff: FeatureFile, load: ImageLoader, batch_size: int, precision: str = "fp32"
) -> ErfResult:
    """Run `method` over every existing target of the features file, `batch_size` targets per call, forwards and
    backwards in `precision` (cafe.compute; maps, values and relevance sums come back float32)."""
    n, k = ff.image.shape
    maps = np.full((n, k, ff.grid, ff.grid), np.nan, dtype=np.float32)
    value, absorbed = np.full((n, k), np.nan, dtype=np.float32), np.full((n, k), np.nan, dtype=np.float32)
    rows, ranks = np.nonzero(ff.image >= 0)
    if method.batch_by_image:  # the maps do not depend on the batch; targets of one image then share its forwards
        by_image = np.argsort(ff.image[rows, ranks], kind="stable")
        rows, ranks = rows[by_image], ranks[by_image]
    seconds = 0.0
    for start in tqdm(range(0, len(rows), batch_size), desc=f"erf L{ff.layer} {method.name}", unit="batch"):
        r, c = rows[start : start + batch_size], ranks[start : start + batch_size]
        images = load(ff.image[r, c])
        began = time.perf_counter()
        with precision_scope(precision, method.backbone.device):
            out = method.explain(images, torch.from_numpy(ff.token[r, c]), torch.from_numpy(ff.feature[r]))
        seconds += time.perf_counter() - began
        maps[r, c], value[r, c], absorbed[r, c] = (t.float().cpu().numpy() for t in (out.maps, out.value, out.absorbed))
    log.info("layer %d, %s: %d targets in %.1f s", ff.layer, method.name, len(rows), seconds)
    return ErfResult(maps, value, absorbed, len(rows) / seconds if seconds else float("nan"))


def activation_result(ff: FeatureFile) -> ErfResult:
    """The activation baseline straight from the features file's activation maps (no images, no tower)."""
    began = time.perf_counter()
    exists = ff.image >= 0
    maps = np.where(exists[..., None, None], ff.layout.token_grid(ff.act_map), np.nan).astype(np.float32)
    value = np.where(exists, ff.value, np.nan).astype(np.float32)
    seconds = time.perf_counter() - began
    return ErfResult(maps, value, np.full_like(value, np.nan), exists.sum() / seconds if seconds else float("nan"))
