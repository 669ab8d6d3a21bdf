"""Resumable SAE training: the state saved beside a checkpoint while it trains (`<out>.partial`), and the key a
saved state must match to be resumed."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from cafe.io import save_torch
from cafe.sae.feed import DEFAULT_BUFFER_TOKENS
from cafe.sae.model import MatryoshkaSAE, SAEConfig

log = logging.getLogger(__name__)


def partial_path(out: str | os.PathLike) -> Path:
    """The resumable training state kept beside a checkpoint while it trains."""
    return Path(f"{out}.partial")


def run_key(config: SAEConfig, activations_hash: str) -> dict[str, Any]:
    """What a saved state must match to be resumed (steps and checkpoint_every may change: no lr schedule; the
    feed may change: both give the same batches)."""
    settings = {k: v for k, v in config.settings().items() if k not in ("steps", "checkpoint_every")}
    return {"config": settings, "activations_hash": activations_hash, "buffer_tokens": DEFAULT_BUFFER_TOKENS}


def save_state(
    path: Path,
    sae: MatryoshkaSAE,
    optimizer: torch.optim.Optimizer,
    step: int,
    tokens: int,
    key: dict[str, Any],
    losses: list[float] | None = None,
) -> None:
    """Write the training state atomically; `losses` (the last steps') let a resumed run report the same final loss
    as an uninterrupted one."""
    state = {
        "sae": sae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "tokens_seen": tokens,
        "key": key,
        "losses": list(losses or []),
    }
    save_torch(path, state)


def load_state(path: Path, key: dict[str, Any], steps: int) -> dict[str, Any] | None:
    """The saved training state if it exists, is readable and belongs to this run; else None (start afresh)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged state only costs the steps since the last good checkpoint
        log.warning("%s: unreadable training state (%s); starting afresh", path, exc)
        return None
    if state.get("key") != key or state.get("step", steps + 1) > steps:
        log.warning("%s: training state of another config or activation file; starting afresh", path)
        return None
    return state
