"""The SAE's data feed: shuffled batches of a layer file's train tokens, streamed from HDF5 window by window
(`TokenStream`, read ahead by a background thread where a GPU trains) or, where they fit, loaded once onto the
training device and gathered there (`ResidentStream`).

Epoch e visits the file's HDF5 chunks in an order seeded by (seed, e), groups them into windows of at most
`buffer_tokens` rows, and yields each window's rows in a seeded random order. So every token appears exactly
once per epoch (the last batch of a window may be short), memory is one window whatever the file size, and
batch n of the stream is a pure function of (file, batch_size, seed, buffer_tokens, n): `batches(start=n)`
resumes a stream exactly. The resident feed yields the very same batches (same windows, same permutations; the
rows are gathered from a float16 copy of the file on the device instead of read from disk), so a result never
depends on which feed trained it, and a run may resume in the other.

Which feed (`sae.resident`, `open_stream`): `never` streams; `always` loads the tokens onto the device, an error
if their float16 bytes (n_tokens x D x 2) exceed its free memory; `auto` loads them when they take at most
RESIDENT_SHARE of it (the rest holds the SAE, Adam's state and the activations), else streams. Free memory is
torch.cuda.mem_get_info on a GPU and the host's available RAM otherwise.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from cafe.errors import CafeError
from cafe.io.activations import open_layer, read_rows
from cafe.sae.config import check_resident

log = logging.getLogger(__name__)

DEFAULT_BUFFER_TOKENS = 1 << 17  # 256 MiB of float16 at ViT-L width
READ_AHEAD = 4  # batches a background thread reads (HDF5, shuffle, pinning) while a GPU trains
RESIDENT_SHARE = 0.75  # `auto`: the most of the device's free memory the float16 tokens may take
MEMINFO = Path("/proc/meminfo")
GB = 1e9

Rows = TypeVar("Rows", np.ndarray, torch.Tensor)


class TokenStream:
    """Shuffled float32 batches (batch_size, D) of the `train` tokens of one layer file, read from disk."""

    resident = False  # its rows come from the file (a GPU trains while a thread reads ahead)

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

    @property
    def nbytes(self) -> int:
        """The train tokens' size in float16, as a resident feed holds them."""
        return self.n_tokens * self.width * 2

    def _chunk_slice(self, chunk: int) -> slice:
        return slice(chunk * self.chunk_rows, min((chunk + 1) * self.chunk_rows, self.n_tokens))

    def _windows(self, epoch: int) -> list[np.ndarray]:
        """The chunk ids of each window of an epoch, in visiting order."""
        order = np.random.default_rng([self.seed, 0, epoch]).permutation(self.n_chunks)
        return [order[i : i + self.chunks_per_window] for i in range(0, self.n_chunks, self.chunks_per_window)]

    def _n_rows(self, window: np.ndarray) -> int:
        return sum(self._chunk_slice(c).stop - self._chunk_slice(c).start for c in window)

    def _n_batches(self, window: np.ndarray) -> int:
        return -(-self._n_rows(window) // self.batch_size)

    def _row_ids(self, chunks: np.ndarray) -> np.ndarray:
        """The file rows of the given chunks, in the order `_read` returns them (file order)."""
        return np.concatenate([np.arange(s.start, s.stop) for s in map(self._chunk_slice, np.sort(chunks))])

    def _read(self, dataset, chunks: np.ndarray) -> np.ndarray:
        """Rows of the given chunks (in file order, for sequential reads) as one float16 array."""
        return np.concatenate([read_rows(dataset, self._chunk_slice(c)) for c in np.sort(chunks)])

    def _plan(self, epoch: int, skip: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """(chunks, seeded order of their rows, first batch) of each window of an epoch with batches left after
        skipping its first `skip` batches: the one shuffle both feeds follow."""
        for w, window in enumerate(self._windows(epoch)):
            n_batches = self._n_batches(window)
            if skip >= n_batches:
                skip -= n_batches
                continue
            yield window, np.random.default_rng([self.seed, 1, epoch, w]).permutation(self._n_rows(window)), skip
            skip = 0

    def _split(self, order: Rows, first: int) -> Iterator[Rows]:
        """The batches' slices of a window's row order, from batch `first`."""
        for b in range(first, -(-len(order) // self.batch_size)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        """One pass over every train token, skipping its first `skip` batches without reading them."""
        with open_layer(self.path) as handle:
            for chunks, order, first in self._plan(epoch, skip):
                rows = self._read(handle["train"], chunks)
                for picked in self._split(order, first):
                    yield torch.from_numpy(rows[picked]).float()

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


class ResidentStream(TokenStream):
    """The batches of `TokenStream`, gathered on `device` from the train tokens loaded there once (float16)."""

    resident = True  # its rows are on the device already: nothing to read ahead

    def __init__(
        self,
        path: str | os.PathLike,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
        width: int | None = None,
    ):
        super().__init__(path, batch_size, seed, buffer_tokens, width)
        self.tokens = self._load(torch.device(device))

    def _load(self, device: torch.device) -> torch.Tensor:
        """The train tokens as one float16 tensor on `device`, copied a window of rows at a time (the host never
        holds more than a window, nor any float32 copy)."""
        tokens = torch.empty((self.n_tokens, self.width), dtype=torch.float16, device=device)
        step = self.chunks_per_window * self.chunk_rows
        with (
            open_layer(self.path) as handle,
            tqdm(total=self.n_tokens, desc="load tokens", unit="token", unit_scale=True) as bar,
        ):
            for start in range(0, self.n_tokens, step):
                rows = read_rows(handle["train"], slice(start, min(start + step, self.n_tokens)))
                tokens[start : start + len(rows)].copy_(torch.from_numpy(rows))
                bar.update(len(rows))
        return tokens

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        """One pass over every train token, the batches of `TokenStream.epoch` gathered on the device."""
        for chunks, order, first in self._plan(epoch, skip):
            ids = torch.from_numpy(self._row_ids(chunks)[order]).to(self.tokens.device)
            for picked in self._split(ids, first):
                yield self.tokens.index_select(0, picked).float()


def available_ram(meminfo: Path = MEMINFO) -> int:
    """The host's available RAM in bytes: Linux's MemAvailable (free plus reclaimable cache), else free pages."""
    try:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
    except OSError:
        found = None
    if found:
        return int(found.group(1)) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_memory(device: torch.device) -> int:
    """Bytes `device` can still take: CUDA's free memory on a GPU, the host's available RAM otherwise."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_ram()


def resident_fits(mode: str, nbytes: int, free: int, device: str, source: str) -> tuple[bool, str]:
    """Whether the `nbytes` of float16 train tokens of `source` go onto a device with `free` bytes free under
    `mode` (module docstring), and why; `always` without room is a CafeError with the numbers."""
    sizes = f"{nbytes / GB:.3g} GB in float16, {free / GB:.3g} GB free on {device}"
    if check_resident(mode) == "never":
        return False, "sae.resident: never"
    if mode == "always":
        if nbytes > free:
            raise CafeError(
                f"{source}: sae.resident is always, but its train tokens take {sizes}; set sae.resident to auto "
                f"or never to stream them from disk, or free memory on {device}"
            )
        return True, f"sae.resident: always; {sizes}"
    share = nbytes / max(free, 1)
    verdict = "<=" if share <= RESIDENT_SHARE else ">"
    return share <= RESIDENT_SHARE, f"sae.resident: auto; {sizes}: {share:.0%} {verdict} {RESIDENT_SHARE:.0%}"


def open_stream(
    path: str | os.PathLike,
    batch_size: int,
    seed: int,
    device: torch.device,
    mode: str = "auto",
    free: int | None = None,
) -> TokenStream:
    """The SAE's feed of a layer file: resident on `device` or streamed, as `mode` and the device's `free` bytes
    (measured when None) decide; the choice and its reason are logged."""
    stream = TokenStream(path, batch_size, seed)
    free = free_memory(device) if free is None else free
    resident, why = resident_fits(mode, stream.nbytes, free, str(device), str(path))
    log.info(
        "%s: %d train tokens x %d %s (%s)",
        path,
        stream.n_tokens,
        stream.width,
        f"loaded onto {device} once, shuffled there" if resident else "streamed from disk window by window",
        why,
    )
    return ResidentStream(path, batch_size, device, seed) if resident else stream


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
