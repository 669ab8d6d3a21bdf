"""Atomic writes: all or nothing, readable by collaborators; unreadable HDF5 files are named; background writes
keep their order and hand their failures back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cafe.errors import CafeError
from cafe.io import atomic_path, open_h5, write_text
from cafe.io.atomic import temp_prefix
from cafe.io.background import BackgroundWriter


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


def test_background_jobs_run_in_order_and_a_failure_surfaces_on_the_callers_thread() -> None:
    done: list[int] = []
    with BackgroundWriter(depth=2) as jobs:
        for i in range(5):
            jobs.put(lambda i=i: done.append(i))
        jobs.close()
        assert done == [0, 1, 2, 3, 4]

    def broken() -> None:
        raise CafeError("layer 3: cannot write")

    jobs = BackgroundWriter(depth=1)
    jobs.put(broken)
    with pytest.raises(CafeError, match="layer 3: cannot write"):  # at a later put, or at close at the latest
        for i in range(100):
            jobs.put(lambda i=i: done.append(10 + i))
        jobs.close()
    with pytest.raises(CafeError, match="layer 3: cannot write"):
        jobs.close()  # joins the thread; the failure stays the answer
    assert done == [0, 1, 2, 3, 4] and not jobs.thread.is_alive()  # nothing after the failed job ran


def test_leaving_the_block_on_an_error_drops_the_waiting_jobs_and_joins() -> None:
    started, done = threading.Event(), []
    jobs = BackgroundWriter(depth=2)

    def slow() -> None:  # still running when the block is left, then finishes
        started.set()
        while not jobs.dropping:
            time.sleep(0.001)
        done.append("slow")

    with pytest.raises(RuntimeError, match="forward failed"), jobs:
        jobs.put(slow)
        jobs.put(lambda: done.append("queued"))
        started.wait()
        raise RuntimeError("forward failed")
    assert done == ["slow"] and not jobs.thread.is_alive()


def test_without_a_queue_jobs_run_at_once_on_the_callers_thread() -> None:
    threads: list[str] = []
    jobs = BackgroundWriter(depth=0)
    jobs.put(lambda: threads.append(threading.current_thread().name))
    assert threads == [threading.current_thread().name] and jobs.thread is None
