"""cafe's own checkpoint (`cafe sae`, cafe/sae/model.py): a Matryoshka SAE trained by cafe, imported as it is
(e.g. one trained in another study on the same backbone)."""

from __future__ import annotations

from pathlib import Path

from cafe.sae.formats.base import RESIDUAL, Imported, Options, TrainedAt
from cafe.sae.model import load_sae

OPTIONS: dict[str, str] = {}


def read(path: Path, options: Options) -> Imported:
    """cafe's SAE and the layer and backbone its checkpoint records."""
    sae, meta = load_sae(path)
    layer, backbone = meta.get("layer"), meta.get("backbone")
    trained_at = TrainedAt(None if layer is None else layer - 1, RESIDUAL, sae.positions, backbone, f"layer {layer}")
    return Imported(sae, trained_at, {"fingerprint": meta["fingerprint"]})
