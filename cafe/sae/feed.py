"""The SAE's data feed: shuffled batches of a layer file's train tokens, streamed chunk by chunk through a bounded
buffer, and read ahead by a background thread where a GPU trains.

Epoch e visits the file's HDF5 chunks in an order seeded by (seed, e), groups them into windows of at most
`buffer_tokens` rows, and yields each window's rows in a seeded random order. So every token appears exactly
once per epoch (the last batch of a window may be short), memory is one window whatever the file size, and
batch n of the stream is a pure function of (file, batch_size, seed, buffer_tokens, n): `batches(start=n)`
resumes a stream exactly.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cafe.io.activations import open_layer, read_rows

log = logging.getLogger(__name__)

DEFAULT_BUFFER_TOKENS = 1 << 17  # 256 MiB of float16 at ViT-L width
READ_AHEAD = 4  # batches a background thread reads (HDF5, shuffle, pinning) while a GPU trains


class TokenStream:
    """Shuffled float32 batches (batch_size, D) of the `train` tokens of one layer file."""

    def __init__(
        self,
        path: str | os.PathLike,
        batch_size: int,
        seed: int = 0,
        buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
        width: int | None = None,
    ):
        self.path, self.batch_size, self.seed = Path(path), batch_size, seed
        with open_layer(self.path, width) as handle:
            self.n_tokens, self.width = handle["train"].shape
            self.chunk_rows = handle["train"].chunks[0]
        self.n_chunks = -(-self.n_tokens // self.chunk_rows)
        self.chunks_per_window = max(1, buffer_tokens // self.chunk_rows)

    def _chunk_slice(self, chunk: int) -> slice:
        return slice(chunk * self.chunk_rows, min((chunk + 1) * self.chunk_rows, self.n_tokens))

    def _windows(self, epoch: int) -> list[np.ndarray]:
        """The chunk ids of each window of an epoch, in visiting order."""
        order = np.random.default_rng([self.seed, 0, epoch]).permutation(self.n_chunks)
        return [order[i : i + self.chunks_per_window] for i in range(0, self.n_chunks, self.chunks_per_window)]

    def _n_batches(self, window: np.ndarray) -> int:
        rows = sum(self._chunk_slice(c).stop - self._chunk_slice(c).start for c in window)
        return -(-rows // self.batch_size)

    def _read(self, dataset, chunks: np.ndarray) -> np.ndarray:
        """Rows of the given chunks (in file order, for sequential reads) as one float16 array."""
        return np.concatenate([read_rows(dataset, self._chunk_slice(c)) for c in np.sort(chunks)])

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        """One pass over every train token, skipping its first `skip` batches without reading them."""
        with open_layer(self.path) as handle:
            for w, window in enumerate(self._windows(epoch)):
                n_batches = self._n_batches(window)
                if skip >= n_batches:
                    skip -= n_batches
                    continue
                rows = self._read(handle["train"], window)
                order = np.random.default_rng([self.seed, 1, epoch, w]).permutation(len(rows))
                for b in range(skip, n_batches):
                    yield torch.from_numpy(rows[order[b * self.batch_size : (b + 1) * self.batch_size]]).float()
                skip = 0

    def batches(self, start: int = 0) -> Iterator[torch.Tensor]:
        """The endless stream of batches across epochs, from global batch number `start`."""
        epoch = 0
        while True:
            per_epoch = sum(self._n_batches(w) for w in self._windows(epoch))
            if start < per_epoch:
                yield from self.epoch(epoch, skip=start)
                start = 0
            else:
                start -= per_epoch
            epoch += 1

    def sample(self, n: int) -> torch.Tensor:
        """About n tokens (float32) from seeded random chunks: statistics for normalisation."""
        n_chunks = min(self.n_chunks, -(-n // self.chunk_rows))
        chunks = np.random.default_rng([self.seed, 2]).choice(self.n_chunks, n_chunks, replace=False)
        with open_layer(self.path) as handle:
            return torch.from_numpy(self._read(handle["train"], chunks)[:n]).float()


def read_ahead(
    batches: Iterator[torch.Tensor], device: torch.device, depth: int = READ_AHEAD
) -> Iterator[torch.Tensor]:
    """`batches` made by a background thread up to `depth` ahead, in order (pinned for an asynchronous copy to a
    GPU); an error in the thread is raised here, and closing the generator stops the thread."""
    done = object()
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put((batch.pin_memory() if device.type == "cuda" else batch, None)):
                    return
            put((done, None))
        except BaseException as exc:
            put((None, exc))

    thread = threading.Thread(target=produce, name="sae-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            batch, error = ready.get()
            if error is not None:
                raise error
            if batch is done:
                return
            yield batch
    finally:
        stop.set()
        thread.join(timeout=5)
