"""`cafe sae` (train one layer's SAE) and `cafe sae-summary` (one DVC metrics file over the layers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.io import write_json
from cafe.sae.model import SAEConfig
from cafe.sae.train import train


def run_sae(args: argparse.Namespace) -> None:
    """CLI: train one layer's SAE."""
    train(args.activations, args.out, args.metrics, parse_section(SAEConfig, args.params, "sae"), args.device)


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
    parser = subparsers.add_parser("sae", help="train the Matryoshka SAE of one layer (resumable)")
    parser.add_argument("--params", required=True, help="params.yaml `sae:` section as JSON")
    parser.add_argument("--activations", required=True, type=Path, help="layer{L}.h5 from `cafe activations`")
    parser.add_argument("--out", required=True, type=Path, help="SAE checkpoint to write (layer{L}.pt)")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write (layer{L}.json)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    parser.set_defaults(func=run_sae)
