"""The non-local annotation loop (paper Sec 4.2, Fig 5): sheets and galleries for people, validated ingestion of
their answers, an automatic non-locality score beside them, and Fig 5.

Modules: `targets` (read features + ERF), `score` (automatic score, agreement), `gallery` and `index` (what a
person looks at), `sheets` (the `sheets` step), `schema` and `ingest` (human files, `annotate-init`),
`answers`, `server` and `page` (`cafe annotate`, the keyboard labelling page), `fig5`, `examples` (Figs 1 and 4).
"""

from __future__ import annotations

import argparse

from cafe.annotation import examples, fig5, ingest, server, sheets


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sheets`, `annotate-init`, `annotate`, `fig5`, `fig1` and `fig4` to the cafe command line."""
    sheets.add_command(subparsers)
    ingest.add_command(subparsers)
    server.add_command(subparsers)
    fig5.add_command(subparsers)
    examples.add_command(subparsers)
