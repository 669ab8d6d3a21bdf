"""The fault suite's "files lost", counted from the files: every file is hashed before a fault, and afterwards a
file counts as lost if it is gone or holds other bytes, except the files the case itself deletes and remakes
(which must then exist and open as what their name says) or lets Snakemake remove (a failing job's old outputs,
by Snakemake's design)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import h5py
import pandas as pd
import torch
from PIL import Image

SKIPPED_FOLDERS = ("logs",)  # job logs: rewritten by every rerun, no product


def opens(path: Path) -> bool:
    """Whether a file opens as what its name says (a complete activation file included)."""
    try:
        if path.suffix == ".h5":
            with h5py.File(path, "r") as handle:
                return path.parent.name != "activations" or int(handle.attrs.get("complete", 0)) == 1
        if path.suffix in (".pt", ".partial"):
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".png", ".jpg", ".jpeg"):
            with Image.open(path) as image:
                image.verify()
        return True
    except Exception:
        return False


def hashes(*folders: Path) -> dict[Path, str]:
    """SHA-256 of every file under the folders (a missing folder holds none), temporaries and job logs aside."""
    files = (p for folder in folders if folder.exists() for p in sorted(folder.rglob("*")))
    return {p: _sha256(p) for p in files if p.is_file() and not _skipped(p)}


def files_lost(before: dict[Path, str], remade: Iterable[Path] = (), removed: Iterable[Path] = ()) -> list[str]:
    """The files of `before` now gone or holding other bytes; `remade` ones may change but must exist and open,
    `removed` ones may be gone (if changed, they must open)."""
    remade, removed = set(remade), set(removed)
    lost = {p for p in remade if not (p.is_file() and opens(p))}
    for path, digest in before.items():
        if path in remade:
            continue
        if not path.is_file():
            lost |= {path} - removed
        elif _sha256(path) != digest and (path not in removed or not opens(path)):
            lost.add(path)
    return sorted(str(p) for p in lost)


def count_lost(record_property, lost: list[str]) -> list[str]:
    """Record the case's count of lost files for the fault table (before any assert), and return them."""
    record_property("files_lost", len(lost))
    return lost


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _skipped(path: Path) -> bool:
    return (
        path.name.endswith(".tmp")
        or path.name == ".snakemake_timestamp"
        or bool(set(path.parts[-3:-1]) & set(SKIPPED_FOLDERS))
    )
