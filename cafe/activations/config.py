"""Extraction params (params.yaml `activations:`), torch-free: `cafe.params` reads them as the DAG loads."""

from __future__ import annotations

from dataclasses import dataclass

from cafe.errors import CafeError
from cafe.images import DECODERS


@dataclass(frozen=True)
class ActivationsConfig:
    """Extraction parameters (params.yaml `activations:`)."""

    batch_size: int = 64
    tokens_per_image: int | None = None  # train tokens kept per image: None = all, else a seeded subsample
    seed: int = 0  # seeds the per-image token subsample
    num_workers: int = 0  # image-decoding worker processes (with decode on the device, they only read files)
    decode: str = "auto"  # JPEGs decoded by PIL in the workers (cpu), on the backbone's device, or auto: on CUDA
    write_queue: int = 1  # batches that may wait for the HDF5 writer thread (host memory); 0: no thread

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise CafeError(f"params: activations.batch_size must be >= 1, got {self.batch_size}")
        if self.decode not in DECODERS:
            raise CafeError(f"params: activations.decode must be one of {DECODERS}, got {self.decode!r}")
        if self.write_queue < 0:
            raise CafeError(f"params: activations.write_queue must be >= 0, got {self.write_queue}")
        if self.tokens_per_image is not None and self.tokens_per_image < 1:
            raise CafeError(f"params: activations.tokens_per_image must be null or >= 1, got {self.tokens_per_image}")
