"""Atomic file writes and guarded readers: an interrupted run never leaves a half file that looks whole."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{temp_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~current_umask())  # mkstemp makes 0600; results are for collaborators to read
    try:
        yield tmp_path
        if replace:
            os.replace(tmp_path, path)
        else:
            os.link(tmp_path, path)
    except (OSError, RuntimeError) as exc:
        if not disk_full(exc, path.parent):
            raise
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        raise CafeError(
            f"{path}: no space left on device while writing it ({exc}); {kept}; free space, re-run"
        ) from exc
    finally:
        tmp_path.unlink(missing_ok=True)


def temp_prefix(path: Path) -> str:
    """The start of the names of `path`'s temporary files on this host (the writer's pid follows)."""
    return f".{path.name}.{socket.gethostname()}."


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of `path` left by writers on this host that no longer run (a `kill -9` leaves them;
    at paper scale each can be tens of GB). Live writers' files, and other hosts', are left alone."""
    prefix = temp_prefix(path)
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether a process of that id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a write failed for lack of space: OSError ENOSPC/EDQUOT, h5py's wording of it, or torch.save's
    bare "file write failed" on a file system that is (nearly) full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if "No space left on device" in text or "errno = 28" in text:
        return True
    return "file write failed" in text and shutil.disk_usage(folder).free < 1 << 26


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


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save atomically, through an open file: given a path, torch names the zip's inner folder after the file,
    here the random temporary, so the same object would give different bytes on every write."""
    import torch  # here, not at the top: most writers of this module need none of it

    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        torch.save(obj, handle)


def open_h5(path: str | os.PathLike, required: tuple[str, ...] = ()) -> h5py.File:  # noqa: F821
    """Open an HDF5 file read-only, with a clear error if it is missing, corrupt or lacks datasets."""
    import h5py  # here, not at the top: most writers of this module (params, provenance, CSVs) need none of it

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
