"""The `cafe` command line: one subcommand per step of the DAG. Snakemake rules call these; people can too.

Each step module exposes `register(subparsers)`, adding its subcommand with `func` set. Every subcommand that
needs parameters takes the relevant params.yaml section as JSON (`--params`), so a rule passes exactly the
values its job depends on.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cafe.errors import CafeError

STEP_MODULES = (
    "cafe.demo",
    "cafe.demo_backbone",
    "cafe.images",
    "cafe.activations",
    "cafe.sae",
    "cafe.features",
    "cafe.erf",
    "cafe.insertion",
    "cafe.figures",
    "cafe.ground_truth",
    "cafe.annotation",
    "cafe.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cafe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in STEP_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except CafeError as exc:
        logging.getLogger("cafe").error("%s", exc)
        print(f"cafe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
