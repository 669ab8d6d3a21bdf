"""`cafe bench`: throughput, peak memory, achieved FLOP/s and utilisation of the machine's matmul peak for every
stage of the pipeline (extraction, SAE training, ERF per method, insertion), each beside what a user would
otherwise write. The stages live in their own modules; `suite` runs them and `report` prints the results."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cafe.bench.harness import add_arguments
from cafe.bench.profiles import MODELS

STAGE_NAMES = ["extraction", "sae", "target", "erf", "lxt", "insertion", "reference", "depth"]  # cafe.bench.suite

DEFAULT_OUT = Path("benchmarks/results/latest.json")
DEFAULT_FIDELITY_OUT = Path("benchmarks/results/fidelity.json")
DEFAULT_FAMILIES_OUT = Path("benchmarks/results/families.json")


def run_bench(args: argparse.Namespace) -> None:
    """CLI: run the suite; the stages' own INFO logs (and OpenCLIP's) are quietened unless -v."""
    from cafe.bench.harness import from_arguments
    from cafe.bench.suite import run_suite  # the stages import torch & co.; `cafe --help` should not

    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("cafe.bench").setLevel(logging.INFO)
    if args.budget:
        from cafe.bench.budget import budget_table

        print(budget_table(args.budget), end="")
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.families:
        from cafe.backbone import resolve_device
        from cafe.bench.families import run_families

        out = DEFAULT_FAMILIES_OUT if args.out == DEFAULT_OUT else args.out
        results = run_families(out, resolve_device(args.device), args.quick, from_arguments(args), only=args.towers)
        for family, record in results.items():
            if family != "admission":
                speed = record["attnlrp_vs_autograd"]
                logging.getLogger("cafe.bench").info("%s: AttnLRP at %.2fx autograd", family, speed["median"])
        return
    if args.fidelity:
        from cafe.bench.fidelity import run_fidelity
        from cafe.devices import resolve_device

        out = DEFAULT_FIDELITY_OUT if args.out == DEFAULT_OUT else args.out
        run_fidelity(args.models, out, resolve_device(args.device), from_arguments(args))
        return
    run_suite(args.models, args.quick, args.out, from_arguments(args), args.device, args.threads, args.stages)


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
    parser.add_argument(
        "--towers",
        nargs="+",
        metavar="NAME",
        help="with --families: only these towers (openclip, timm-clip, timm-siglip, timm-dinov2-reg4, hf-clip, "
        "hf-dinov2, hf-dinov2-reg4, hf-siglip)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGE_NAMES,
        help="only these stages (default: all): a short re-measurement of one figure",
    )
    parser.add_argument(
        "--budget",
        type=Path,
        metavar="FILE",
        help="instead: print the paper-scale time budget per precision from a GPU check or bench result JSON",
    )
    add_arguments(parser)
    parser.set_defaults(func=run_bench)
