"""Atomic file writes and guarded readers: an interrupted run never leaves a half file that looks whole."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py

from cafe.errors import CafeError


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. replace=False never
    replaces an existing file, even one created meanwhile by another process (FileExistsError): a hard link,
    unlike a rename, fails atomically when the name exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~current_umask())  # mkstemp makes 0600; results are for collaborators to read
    try:
        yield tmp_path
        if replace:
            os.replace(tmp_path, path)
        else:
            os.link(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, replace: bool = True) -> None:
    """Write a text file atomically (replace=False: only where no file of that name exists, else FileExistsError)."""
    with atomic_path(path, replace) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write pretty JSON atomically (metrics files are read by people and by `dvc metrics`)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | os.PathLike, frame: pandas.DataFrame) -> None:  # noqa: F821
    """Write a pandas frame as CSV atomically, without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_figure(path: str | os.PathLike, fig: matplotlib.figure.Figure, dpi: int = 150) -> None:  # noqa: F821
    """Save a matplotlib figure atomically as PNG."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")


def open_h5(path: str | os.PathLike, required: tuple[str, ...] = ()) -> h5py.File:
    """Open an HDF5 file read-only, with a clear error if it is missing, corrupt or lacks datasets."""
    path = Path(path)
    if not path.exists():
        raise CafeError(f"{path}: file not found (has the step that writes it run?)")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise CafeError(
            f"{path}: not a readable HDF5 file ({exc}); delete it and re-run the step that writes it"
        ) from exc
    missing = [name for name in required if name not in handle]
    if missing:
        handle.close()
        raise CafeError(f"{path}: missing dataset(s) {missing}; the file is incomplete or from another version")
    return handle


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    """A short content hash, used to fingerprint manifests and checkpoints."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
