"""`cafe bench`: throughput, peak memory, achieved FLOP/s and utilisation of the machine's matmul peak for every
stage of the pipeline (extraction, SAE training, ERF per method, insertion), each beside what a user would
otherwise write. The stages live in their own modules; `suite` runs them and `report` prints the results."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cafe.bench.profiles import MODELS

DEFAULT_OUT = Path("benchmarks/results/latest.json")
DEFAULT_FIDELITY_OUT = Path("benchmarks/results/fidelity.json")
DEFAULT_FAMILIES_OUT = Path("benchmarks/results/families.json")


def run_bench(args: argparse.Namespace) -> None:
    """CLI: run the suite; the stages' own INFO logs (and OpenCLIP's) are quietened unless -v."""
    from cafe.bench.suite import run_suite  # the stages import torch & co.; `cafe --help` should not

    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("cafe.bench").setLevel(logging.INFO)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.families:
        from cafe.backbone import resolve_device
        from cafe.bench.families import run_families

        out = DEFAULT_FAMILIES_OUT if args.out == DEFAULT_OUT else args.out
        for family, record in run_families(out, resolve_device(args.device), args.quick).items():
            logging.getLogger("cafe.bench").info("%s: AttnLRP at %.2fx autograd", family, record["attnlrp_vs_autograd"])
        return
    if args.fidelity:
        from cafe.backbone import resolve_device
        from cafe.bench.fidelity import run_fidelity

        out = DEFAULT_FIDELITY_OUT if args.out == DEFAULT_OUT else args.out
        run_fidelity(args.models, out, resolve_device(args.device))
        return
    run_suite(args.models, args.quick, args.out, args.device, args.threads)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe bench`."""
    parser = subparsers.add_parser(
        "bench", help="benchmark every stage against this machine's matmul peak", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        choices=list(MODELS),
        help="demo: cafe-demo-vit; vitl: ViT-L-14 (random weights, nothing downloaded)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute (tiny sizes)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (markdown summary beside it)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    parser.add_argument(
        "--fidelity",
        action="store_true",
        help="instead: each precision mode against fp32, gated (ERF maps, insertion AUC, SAE; bf16 speed ratios)",
    )
    parser.add_argument(
        "--families",
        action="store_true",
        help="instead: AttnLRP vs plain autograd on a tower of each backbone family (OpenCLIP, timm DINOv2, ...)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.set_defaults(func=run_bench)
