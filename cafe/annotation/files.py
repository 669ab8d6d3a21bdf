"""Where human annotation files live: `data/annotations/layer{L}.csv` (one person) and
`data/annotations/<name>/layer{L}.csv` (several). No pandas: the DAG (workflow/rules/annotation.smk) lists them as
it loads."""

from __future__ import annotations

import re
from pathlib import Path

from cafe.errors import CafeError

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


def check_annotator(name: str) -> str:
    """An annotator name that is safe as one folder name (letters, digits, _ and -; no /, .., or hidden file)."""
    if not PLAIN_NAME.fullmatch(name):
        raise CafeError(
            f"annotator {name!r} is not a plain name: use 1-40 letters, digits, '_' or '-', starting with a "
            "letter or digit (it becomes the folder data/annotations/<name>/)"
        )
    return name


def human_path(annotations_dir: str | Path, layer: int, annotator: str | None = None) -> Path:
    """Where a person's answers for `layer` live: the top-level file, or the named annotator's."""
    folder = Path(annotations_dir) if annotator is None else Path(annotations_dir) / check_annotator(annotator)
    return folder / f"layer{layer}.csv"


def human_files(annotations_dir: str | Path, layer: int) -> dict[str, Path]:
    """Every annotator's file for `layer`, keyed by its path under `annotations_dir` (`layer6.csv`,
    `alice/layer6.csv`); folders that are not plain names (hidden, ...) are not annotators and are skipped."""
    root = Path(annotations_dir)
    folders = root.iterdir() if root.is_dir() else []
    names = sorted(p.name for p in folders if p.is_dir() and PLAIN_NAME.fullmatch(p.name))
    paths = [human_path(root, layer)] + [human_path(root, layer, name) for name in names]
    return {path.relative_to(root).as_posix(): path for path in paths if path.is_file()}
