"""`cafe activations`: residual-stream activations of every requested layer from one forward pass per batch
(`extract`), written as the activations contract (`cafe.io.activations`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cafe.activations.config import ActivationsConfig
from cafe.activations.extract import extract
from cafe.backbone import BackboneConfig
from cafe.backbone.tower import Backbone
from cafe.compute import add_precision_argument
from cafe.config import parse_section
from cafe.io.manifest import read_skipped

log = logging.getLogger(__name__)


def run_activations(args: argparse.Namespace) -> None:
    """CLI: load the backbone and write one activation file per requested layer."""
    config = parse_section(ActivationsConfig, args.params, "activations")
    backbone = Backbone.load(parse_section(BackboneConfig, args.backbone, "backbone"))
    skipped = len(read_skipped(args.skipped)) if args.skipped else 0
    if skipped:
        log.warning("%d unreadable images were left out of the manifest (listed in %s)", skipped, args.skipped)
    extract(backbone, args.manifest, args.images_root, args.layers, args.out_dir, config, args.precision, skipped)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe activations`."""
    parser = subparsers.add_parser("activations", help="residual streams of the manifest's images, per layer")
    parser.add_argument("--params", required=True, help="params.yaml `activations:` section as JSON")
    parser.add_argument("--backbone", required=True, help="params.yaml `backbone:` section as JSON")
    parser.add_argument("--manifest", required=True, type=Path, help="manifest CSV (from `cafe manifest`)")
    parser.add_argument("--skipped", type=Path, help="skipped-image list of the manifest (counted in the files)")
    parser.add_argument("--images-root", required=True, type=Path, help="the ImageFolder root the manifest indexes")
    parser.add_argument("--layers", required=True, type=int, nargs="+", help="blocks to record (1-based)")
    parser.add_argument("--out-dir", required=True, type=Path, help="writes <out-dir>/layer{L}.h5")
    add_precision_argument(parser)
    parser.set_defaults(func=run_activations)
