"""Writes off the critical path: jobs run in order on one thread behind a bounded queue, so the producer (a forward
pass) goes on while earlier results are written. h5py releases the GIL while HDF5 writes data, and hashlib while it
hashes large buffers, so the producer's thread keeps running beside them."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from types import TracebackType


class BackgroundWriter:
    """Runs write jobs in the order given on one thread, at most `depth` of them waiting (0: each job runs at once
    on the caller's thread). A job's exception is raised on the caller's thread, at its next `put` or at `close`;
    the jobs after it are dropped. Leaving the `with` block on an exception drops the waiting jobs and joins."""

    def __init__(self, depth: int, name: str = "writer"):
        self.error: Exception | None = None
        self.dropping = False
        self.jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max(depth, 1))
        self.thread = threading.Thread(target=self._work, name=name, daemon=True) if depth > 0 else None
        if self.thread is not None:
            self.thread.start()

    def put(self, job: Callable[[], None]) -> None:
        """Queue `job` (waiting while the queue is full), or run it now without a thread."""
        self._raise()
        if self.thread is None:
            job()
        else:
            self.jobs.put(job)

    def close(self) -> None:
        """Wait until every queued job has run; raise the first job's exception, if any."""
        if self.thread is not None and self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join()
        self._raise()

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is None and not self.dropping:
                try:
                    job()
                except Exception as exc:  # handed to the caller's thread, which raises it
                    self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
            return
        self.dropping = True
        with contextlib.suppress(Exception):  # the exception leaving the block is the one to report
            self.close()
