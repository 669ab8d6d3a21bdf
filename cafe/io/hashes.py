"""Content hashes (MD5, as DVC records them) of files, computed once and reused while a file's size, mtime and
inode are unchanged, so that 1.2 M ImageNet images or multi-GB checkpoints are not read on every run.

The cache is a small SQLite file (one row per path: size, mtime_ns, inode, md5). It is only a speed-up: deleting
it costs one re-hash, never a wrong answer, and a file whose stat changed is always hashed again.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

BLOCK = 1 << 20
HASH_CACHE = ".cafe/hashes.sqlite"  # the project's cache, git-ignored


def md5_file(path: str | os.PathLike) -> str:
    """MD5 of a file's bytes (hex), the hash DVC 3 records in dvc.lock."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """MD5s keyed by (absolute path, size, mtime_ns, inode); `hashed` counts the files actually read."""

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=60)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER,"
            " md5 TEXT)"
        )
        self.hashed = 0

    def md5(self, path: str | os.PathLike) -> str:
        """The file's MD5, read from the cache when its stat matches, else computed and stored."""
        key = os.path.abspath(path)
        stat = os.stat(key)
        row = self.db.execute("SELECT size, mtime_ns, inode, md5 FROM hashes WHERE path = ?", (key,)).fetchone()
        if row is not None and tuple(row[:3]) == (stat.st_size, stat.st_mtime_ns, stat.st_ino):
            return row[3]
        digest = md5_file(key)
        self.hashed += 1
        self.db.execute(
            "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)",
            (key, stat.st_size, stat.st_mtime_ns, stat.st_ino, digest),
        )
        return digest

    def many(self, paths: Iterable[str | os.PathLike]) -> list[str]:
        """MD5s of several files, in order."""
        return [self.md5(path) for path in paths]

    def close(self) -> None:
        """Store what was hashed and close the file."""
        self.db.commit()
        self.db.close()

    def __enter__(self) -> HashCache:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
