"""`cafe sae` (train one layer's SAE), `cafe sae-import` (read it from another tool's file instead) and
`cafe sae-summary` (one DVC metrics file over the layers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cafe.compute import add_precision_argument
from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.io import write_json
from cafe.sae.config import SAEConfig


def run_sae_import(args: argparse.Namespace) -> None:
    """CLI: import one layer's SAE from another tool's file instead of training it."""
    from cafe.sae.importer import import_sae, write_metrics

    options = json.loads(args.options)
    write_metrics(args.metrics, import_sae(args.format, args.source, options, args.activations, args.out))


def run_sae(args: argparse.Namespace) -> None:
    """CLI: train one layer's SAE (on an activation file of the layer asked for, if --layer is given)."""
    from cafe.io.activations import open_layer  # here: `cafe sae-summary` (this module too) needs no torch or HDF5
    from cafe.sae.train import train

    if args.layer is not None:
        with open_layer(args.activations) as handle:
            found = int(handle.attrs["layer"])
        if found != args.layer:
            raise CafeError(
                f"{args.activations}: activations of layer {found}, but the SAE of layer {args.layer} was asked for "
                f"(a file copied from another layer?); re-run the `activations` step"
            )
    config = parse_section(SAEConfig, args.params, "sae")
    train(args.activations, args.out, args.metrics, config, args.device, args.precision)


SUMMARY_KEYS = ("explained_variance", "l0", "dead_fraction", "tokens_per_s", "steps")


def summarise(metrics_paths: list[Path], out: Path) -> dict[str, dict]:
    """One DVC metrics file over the layers (`layer{L}: {explained_variance, l0, ...}`) for `dvc metrics show`."""
    summary = {}
    for path in metrics_paths:
        try:
            metrics = json.loads(Path(path).read_text())
            summary[f"layer{metrics['layer']}"] = {key: metrics[key] for key in SUMMARY_KEYS}
        except (OSError, ValueError, KeyError) as exc:
            raise CafeError(f"{path}: not an SAE metrics file from `cafe sae` ({exc!r})") from None
    write_json(out, summary)
    return summary


def run_sae_summary(args: argparse.Namespace) -> None:
    """CLI: one DVC metrics file over the layers."""
    summarise(args.metrics, args.out)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe sae` and `cafe sae-summary`."""
    summary = subparsers.add_parser("sae-summary", help="collect per-layer SAE metrics into one DVC metrics file")
    summary.add_argument("metrics", nargs="+", type=Path, help="results/sae/layer{L}.json files")
    summary.add_argument("--out", required=True, type=Path, help="results/metrics/sae.json")
    summary.set_defaults(func=run_sae_summary)
    imports = subparsers.add_parser("sae-import", help="read one layer's SAE from another tool's file (no training)")
    imports.add_argument("--format", required=True, help="sae.source.format: saelens, saev, prisma, ...")
    imports.add_argument("--source", required=True, type=Path, help="the SAE file or folder of this layer")
    imports.add_argument("--options", default="{}", help="sae.source.options as JSON")
    imports.add_argument("--activations", required=True, type=Path, help="layer{L}.h5 it must match")
    imports.add_argument("--out", required=True, type=Path, help="SAE checkpoint to write (layer{L}.pt)")
    imports.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write (layer{L}.json)")
    imports.set_defaults(func=run_sae_import)
    parser = subparsers.add_parser("sae", help="train the Matryoshka SAE of one layer (resumable)")
    parser.add_argument("--params", required=True, help="params.yaml `sae:` section as JSON")
    parser.add_argument("--activations", required=True, type=Path, help="layer{L}.h5 from `cafe activations`")
    parser.add_argument("--out", required=True, type=Path, help="SAE checkpoint to write (layer{L}.pt)")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write (layer{L}.json)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    add_precision_argument(parser)
    parser.add_argument("--layer", type=int, help="the layer the activation file must hold (checked)")
    parser.set_defaults(func=run_sae)
