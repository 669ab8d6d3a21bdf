"""`cafe insertion` (one ranking method) and `cafe greedy` (the ceiling) on one layer, from the features, SAE,
manifest, images and (for ERF methods) ERF files; every input is checked before the tower loads."""

from __future__ import annotations

import argparse
import logging

from cafe.backbone import BackboneConfig, tower_shape
from cafe.backbone.tower import Backbone
from cafe.compute import add_precision_argument, precision_scope
from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.images import Crop, manifest_loader
from cafe.insertion.config import InsertionConfig
from cafe.insertion.run import BUILTIN_METHODS, layer_curves
from cafe.io import write_csv
from cafe.io.erf_maps import read_erf_maps
from cafe.io.features import read_features
from cafe.sae.model import check_sae, load_sae

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe insertion` (one ranking method) and `cafe greedy` (the ceiling on a few targets)."""
    p = subparsers.add_parser(
        "insertion",
        help="insertion/deletion curves of one ranking method on one layer",
        description="Insert (delete) image patches in a method's order into (from) canvases and "
        "re-measure the SAE feature; random and activation need no ERF file.",
    )
    p.add_argument("--method", required=True, help="an ERF method name (reads --erf), or random / activation")
    p.add_argument("--erf", help="results/erf/layer{L}/{method}.h5 (ERF methods only)")
    _common_arguments(p, "results/insertion/layer{L}/{method}.csv")
    p.set_defaults(func=run_insertion)
    g = subparsers.add_parser(
        "greedy",
        help="greedy insertion/deletion ceiling on a few targets of one layer",
        description="Greedy forward selection of patches (params greedy_targets per layer).",
    )
    _common_arguments(g, "results/insertion/layer{L}/greedy.csv")
    g.set_defaults(func=run_greedy, method="greedy", erf=None)


def _common_arguments(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--params", default="{}", help="the params.yaml `insertion` section as JSON")
    p.add_argument("--backbone", required=True, help="the params.yaml `backbone` section as JSON")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--features", required=True, help="results/features/layer{L}.h5")
    p.add_argument("--sae", required=True, help="results/sae/layer{L}.pt")
    p.add_argument("--manifest", required=True, help="results/data/manifest.csv")
    p.add_argument("--images-root", required=True, help="root the manifest's paths are relative to")
    p.add_argument("--out", required=True, help=out)
    add_precision_argument(p)


def run_greedy(args: argparse.Namespace) -> None:
    """CLI: the greedy ceiling, an insertion run whose ranking method is the greedy search."""
    run_insertion(args)


def run_insertion(args: argparse.Namespace) -> None:
    """Check every input before loading the tower, run one method on one layer, write the long CSV."""
    config = parse_section(InsertionConfig, args.params, "insertion")
    backbone_cfg = parse_section(BackboneConfig, args.backbone, "backbone")
    builtin = args.method in BUILTIN_METHODS
    if builtin == bool(args.erf):
        raise CafeError(f"insertion: --erf is {'not used' if builtin else 'required'} for method {args.method!r}")
    shape = tower_shape(backbone_cfg)
    ff = read_features(args.features, args.layer, shape.layout)
    erf_maps = None if builtin else read_erf_maps(args.erf, args.method, ff)
    load = manifest_loader(args.manifest, args.images_root, Crop(shape.image_size, shape.resize), ff)
    backbone = Backbone.load(backbone_cfg)
    sae, meta = load_sae(args.sae, backbone.device)
    check_sae(meta, ff, args.sae)
    with precision_scope(args.precision, backbone.device):  # every forward of the curves (cafe.compute)
        frame = layer_curves(args.method, config, backbone, sae, ff, load, erf_maps)
    write_csv(args.out, frame)
    log.info("wrote %s", args.out)
