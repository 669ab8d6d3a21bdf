"""The `cafe` command line: one subcommand per step of the DAG. Snakemake rules call these; people can too.

The module named for a command exposes `register(subparsers)`, adding its subcommands with `func` set to the
handler `run_<command>`. Only the module of the command being run is imported (a pipeline run starts ~90 short
processes; importing every step's dependencies each time would cost minutes). Commands that need parameters
take the relevant params.yaml section as JSON (`--params`), so a rule passes exactly the values its job
depends on.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import resource
import sys
from pathlib import Path

from cafe.errors import CafeError

log = logging.getLogger(__name__)

COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("cafe.demo.data", "generate the demo scenes (ImageFolder) with object records and masks"),
    "train-demo-backbone": ("cafe.demo.backbone", "train the demo OpenCLIP tower on the demo scenes"),
    "manifest": ("cafe.manifest.draw", "list which images are used, in which split and order"),
    "activations": ("cafe.activations.command", "write residual-stream activations of every layer (one pass)"),
    "sae": ("cafe.sae.command", "train one layer's Matryoshka SAE, streaming from its activations"),
    "sae-import": ("cafe.sae.command", "read one layer's SAE from another tool's file (SAELens, saev...) instead"),
    "sae-summary": ("cafe.sae.command", "collect per-layer SAE metrics into one DVC metrics file"),
    "features": ("cafe.features.find", "top activations of the first N features of one layer's SAE"),
    "erf": ("cafe.erf.command", "effective receptive fields of the feature targets, by one attribution method"),
    "insertion": ("cafe.insertion.command", "insertion/deletion curves of one ranking method"),
    "greedy": ("cafe.insertion.command", "greedy insertion ceiling on a few targets"),
    "fig3": ("cafe.insertion.fig3", "AUC table, statistics and Fig 3"),
    "ground-truth": ("cafe.ground_truth.command", "score maps against the demo's planted causes"),
    "counterfactuals": ("cafe.ground_truth.interventions", "z of demo targets re-rendered without their causes"),
    "compositional": ("cafe.ground_truth.compositional_report", "interventional truth of demo targets vs ERFs"),
    "sheets": ("cafe.annotation.sheets", "annotation sheet, galleries and HTML index of one layer"),
    "annotate-init": ("cafe.annotation.ingest", "start a human annotation file from a sheet (never overwrites)"),
    "annotate": (
        "cafe.annotation.server",
        "label a layer's features in a browser by keys (local server, writes the CSV)",
    ),
    "fig5": ("cafe.annotation.fig5", "validate human annotations and draw Fig 5"),
    "fig1": ("cafe.annotation.examples", "Fig 1: top images of local features (top) and non-local ones (bottom)"),
    "fig4": ("cafe.annotation.examples", "Fig 4: non-local features across layers, image | activation map | ERF"),
    "params": ("cafe.params", "print every parameter a study runs with, defaults filled in"),
    "verify": ("cafe.provenance", "check every product against what made it: params, inputs, code"),
    "sync": ("cafe.workspace_sync", "after dvc pull/checkout: remove products not current, mark the rest up to date"),
    "bench": ("cafe.bench", "benchmark every stage against this machine's matmul peak"),
}


def _parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="cafe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, sub


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """Full options for `command` (its module imported); one-line entries for every other command."""
    parser, sub = _parser()
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command][0]).register(sub)
    else:
        for name, (_, summary) in COMMANDS.items():
            sub.add_parser(name, help=summary)
    return parser


def process_age() -> float | None:
    """Seconds since this process started (from Linux's /proc; None elsewhere)."""
    try:
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return float(Path("/proc/uptime").read_text().split()[0]) - started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads) and of its finished children (data loaders)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    as_process = argv is None  # the `cafe` program, not a call from Python
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if as_process and (age := process_age()) is not None:  # benchmarks/dag_timing.py sums these per rule
        log.info("start-up %.2f s, %.2f s CPU (interpreter and imports of cafe %s)", age, cpu_seconds(), args.command)
    try:
        status = args.func(args)
        modules = list(sys.modules)  # the code of the step, before the record writer imports anything
        from cafe.provenance import write_records

        write_records(args, modules)
        if as_process:
            log.info("%.2f s CPU in all (cafe %s)", cpu_seconds(), args.command)
    except CafeError as exc:
        print(f"cafe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
