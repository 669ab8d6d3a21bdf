"""Numeric precision of the pipeline's heavy work (params.yaml `compute:`), applied by one context helper.

    fp32   float32 everywhere, TF32 off (the reference every other mode is gated against)
    tf32   float32 tensors; CUDA matmuls and convolutions may use TF32 (`allow_tf32`, matmul precision "high")
    bf16   autocast to bfloat16 on the step's device: matmuls and convolutions in bf16, autocast's float32 list
           (LayerNorm, softmax, reductions) in float32; weights, the residual stream, relevance sums and SAE
           optimiser state stay float32; the patch embedding and the SAE encoding of the targets run in float32
           (`full_precision`): they are cheap, and the embedding's bf16 output would make the residual stream bf16

`precision_scope(mode, device)` is the only place a mode is turned into torch settings; every step enters it around its
forwards (extraction, ERF, insertion) or its training step (SAE). A step may override the section's mode
(`compute.steps.<step>`); the rule passes each step only its own resolved mode, so changing one step's mode reruns
only that step's jobs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from cafe.errors import CafeError

if TYPE_CHECKING:  # torch loads with the first scope entered: the config (cafe.params) needs none of it
    import torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "tf32", "bf16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that make bf16 matmuls faster than float32


@dataclass(frozen=True)
class StepPrecision:
    """Per-step overrides of `compute.precision` (None: the section's mode)."""

    activations: str | None = None
    sae: str | None = None
    erf: str | None = None
    insertion: str | None = None


@dataclass(frozen=True)
class ComputeConfig:
    """The precision of backbone forwards, ERF passes and SAE training; fp32 unless the fidelity gates pass."""

    precision: str = "fp32"
    steps: StepPrecision = field(default_factory=StepPrecision)

    def __post_init__(self) -> None:
        check_precision(self.precision, "compute.precision")
        for f in fields(StepPrecision):
            value = getattr(self.steps, f.name)
            if value is not None:
                check_precision(value, f"compute.steps.{f.name}")

    def for_step(self, step: str) -> str:
        """The mode step `step` runs in: its override, else the section's."""
        return getattr(self.steps, step) or self.precision


def check_precision(mode: str, key: str = "precision") -> str:
    """`mode` if it is a known precision, else an error naming the key and the value."""
    if mode not in PRECISIONS:
        raise CafeError(f"params: {key} must be one of {list(PRECISIONS)}, got {mode!r}")
    return mode


@contextlib.contextmanager
def _matmul_flags(tf32: bool) -> Iterator[None]:
    """Set the float32 matmul precision flags for the block, and restore them after."""
    import torch

    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]


@contextlib.contextmanager
def precision_scope(mode: str, device: torch.device | str) -> Iterator[None]:
    """Run the block in `mode` (fp32 | tf32 | bf16) on `device`'s type; see the module docstring."""
    import torch

    check_precision(mode)
    device_type = torch.device(device).type
    if mode == "bf16" and device_type == "cpu":
        _warn_if_slow_bf16()
    with _matmul_flags(tf32=mode == "tf32"):
        if mode == "bf16":
            with torch.autocast(device_type, dtype=torch.bfloat16):
                yield
        else:
            yield


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@functools.cache
def _warn_if_slow_bf16() -> None:
    """bf16 on a CPU without bf16 instructions is emulated: several times slower than float32 (7x measured on an
    AVX2 EPYC for a demo block), so say so once instead of letting a run crawl."""
    flags = cpu_flags()
    if flags is not None and not flags & set(CPU_BF16_FLAGS):
        log.warning(
            "compute.precision bf16 on a CPU without %s: bf16 is emulated here and runs slower than fp32; "
            "use fp32 on this machine",
            " or ".join(CPU_BF16_FLAGS),
        )


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast off for a block that must stay float32 inside a bf16 step (the patch embedding, the SAE encoder of
    the targets): cheap operations whose rounding would reach every later number."""
    import torch

    return torch.autocast(torch.device(device).type, enabled=False)


def add_precision_argument(parser) -> None:
    """The `--precision` option of a step command (the rule passes the step's resolved mode)."""
    parser.add_argument(
        "--precision", default="fp32", choices=PRECISIONS, help="fp32 | tf32 | bf16 (params.yaml compute:)"
    )
