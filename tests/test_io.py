"""Atomic writes: all or nothing, readable by collaborators; unreadable HDF5 files are named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cafe.errors import CafeError
from cafe.io import atomic_path, open_h5, write_text
from cafe.io.atomic import temp_prefix


def test_an_interrupted_write_leaves_neither_a_half_file_nor_a_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "table.csv"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n" and os.listdir(target.parent) == ["table.csv"]


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        write_text(tmp_path / "index.html", "<html/>")
    finally:
        os.umask(before)
    assert (tmp_path / "index.html").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("content,message", [(None, "file not found"), (b"not hdf5", "not a readable HDF5 file")])
def test_missing_or_corrupt_hdf5_is_named(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "layer3.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CafeError, match=f"layer3.h5: {message}"):
        open_h5(path)


def test_a_no_replace_write_keeps_a_file_created_meanwhile(tmp_path: Path) -> None:
    """annotate-init's guard: a human file that appears during the write is neither replaced nor merged."""
    path = tmp_path / "layer1.csv"
    with pytest.raises(FileExistsError), atomic_path(path, replace=False) as tmp:
        tmp.write_text("the generated sheet")
        path.write_text("a person's answers")  # another process, between the check and the rename
    assert path.read_text() == "a person's answers" and list(tmp_path.iterdir()) == [path]
    write_text(tmp_path / "new.csv", "sheet", replace=False)
    assert (tmp_path / "new.csv").read_text() == "sheet"


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "layer1.h5"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f"{temp_prefix(target)}{int(dead.stdout)}.abc.tmp"
        running = tmp_path / f"{temp_prefix(target)}{alive.pid}.def.tmp"
        other = tmp_path / f"{temp_prefix(tmp_path / 'layer3.h5')}{int(dead.stdout)}.ghi.tmp"
        for path in (stale, running, other):
            path.write_bytes(b"half")
        write_text(target, "whole")
        assert not stale.exists() and running.exists() and other.exists()
    finally:
        alive.kill()
