"""Insertion tests (Fig 3): insert image patches in a method's ranking order into a canvas and watch the SAE
feature recover; deletion from the same batches; random orders as floor, greedy selection as ceiling.

`orders` ranks patches (seeded tie-breaks), `curves` measures batched curves, `greedy` builds the ceiling,
`targets` reads the features/ERF files, `run` does one layer x method, `command` is the CLI, `summary` turns
curve tables into AUCs, tests and agreement (it imports no torch, so `cafe fig3` starts fast).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe insertion` and `cafe greedy`; torch and the tower code load only when one of them runs."""
    from cafe.insertion.command import register as register_commands

    register_commands(subparsers)
