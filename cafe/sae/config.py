"""The SAE params (params.yaml `sae:`), torch-free: `cafe.params` reads them as the DAG loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cafe.config import as_dict
from cafe.errors import CafeError
from cafe.sae.formats import SAESource
from cafe.sae.nonlinearity import nonlinearity

RUN_ONLY = ("resident", "source")  # SAEConfig fields that are not what a trained SAE computes
RESIDENT_MODES = ("auto", "always", "never")  # sae.resident (cafe/sae/feed.py)


@dataclass(frozen=True)
class SAEConfig:
    """Training and shape parameters of one SAE (params.yaml `sae:`)."""

    expansion: int = 8
    groups: tuple[float, ...] = (0.0625, 0.125, 0.25, 0.5, 1.0)
    activation: str = "relu"
    l1: float = 0.02  # the demo: L0 ~ 30 of 1024 latents
    k: int = 16
    lr: float = 0.002
    steps: int = 1000
    batch_size: int = 1024
    checkpoint_every: int = 500  # steps between resumable training states
    seed: int = 0
    resident: str = "auto"  # train tokens loaded onto the training device or streamed (cafe/sae/feed.py)
    source: SAESource | None = None  # import the SAEs from another tool's files instead (cafe/sae/formats/)

    def __post_init__(self) -> None:
        nonlinearity(self.activation)  # an unknown name is an error that lists the known ones
        check_resident(self.resident)
        if not self.groups or list(self.groups) != sorted(self.groups) or self.groups[-1] != 1.0 or self.groups[0] <= 0:
            raise CafeError(
                f"params: sae.groups must rise strictly to 1.0 (fractions of the latents), got {list(self.groups)}"
            )
        if len(set(self.groups)) != len(self.groups):
            raise CafeError(f"params: sae.groups has repeated prefixes: {list(self.groups)}")
        for name in ("expansion", "k", "steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise CafeError(f"params: sae.{name} must be >= 1, got {getattr(self, name)}")

    def settings(self) -> dict[str, Any]:
        """The fields that shape the trained SAE, as data (its checkpoint's config): all but RUN_ONLY."""
        return {k: v for k, v in as_dict(self).items() if k not in RUN_ONLY}

    def prefix_sizes(self, n_latents: int) -> list[int]:
        """Nested prefix lengths (in latents) of the Matryoshka loss."""
        return sorted({max(1, round(g * n_latents)) for g in self.groups})


def check_resident(mode: str) -> str:
    """`mode` if it is a known sae.resident value, else an error listing them."""
    if mode not in RESIDENT_MODES:
        raise CafeError(f"params: sae.resident must be one of {list(RESIDENT_MODES)}, got {mode!r}")
    return mode
