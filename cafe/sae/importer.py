"""`cafe sae-import`: one layer's SAE read from another tool's file (cafe/sae/formats/) instead of trained, checked
against where it was trained (the layer file's width, layer and backbone; the residual stream; the token positions),
and written as the checkpoint every later step reads, with metrics over the analysis tokens."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cafe.backbone import tower_shape
from cafe.errors import CafeError
from cafe.io import save_torch, write_json
from cafe.io.activations import iter_analysis, layer_attrs, open_layer
from cafe.sae.encoder import SAEEncoder
from cafe.sae.formats import read_sae
from cafe.sae.formats.base import RESIDUAL, Imported
from cafe.sae.formats.saev import SAMPLES, estimate_input_scaling, fold_input_scaling
from cafe.sae.model import save_import
from cafe.tokens import TokenLayout

log = logging.getLogger(__name__)

READ_TOKENS = 1 << 14
SIZES = {"s": "S", "small": "S", "b": "B", "base": "B", "l": "L", "large": "L", "h": "H", "huge": "H", "g": "g"}
SIZES |= {"giant": "g", "bigg": "bigG"}
VIT_NAME = re.compile(r"vit[-_/]?(bigg|giant|huge|large|base|small|[sblhg])(?![a-z])[-_/]?(?:patch)?(\d{1,2})?", re.I)


def import_sae(
    format: str, source: str | os.PathLike, options: dict[str, Any], activations: str | os.PathLike, out: Path
) -> dict[str, Any]:
    """Read, check and write one layer's imported SAE; returns its metrics."""
    imported = read_sae(format, source, options)
    with open_layer(activations) as handle:
        attrs = layer_attrs(handle)
    check_trained_at(imported, attrs, Path(source), Path(activations))
    if imported.needs_input_scaling:
        mean, scalar = estimate_input_scaling(_tokens_at(activations, imported.encoder.positions))
        fold_input_scaling(imported.encoder, mean, scalar)
        imported.details |= {"scale_scalar": scalar, "scale_mean_norm": float(mean.norm())}
        log.info("saev input scaling estimated from %s: scalar %.4g, |mean| %.4g", activations, scalar, mean.norm())
    provenance = {
        "layer": attrs["layer"],
        "backbone": attrs["backbone"],
        "pretrained": attrs["pretrained"],
        "source": {
            "format": format,
            "path": str(source),
            "sha256": content_hash(Path(source)),
            "hook": imported.trained_at.hook,
            "positions": imported.trained_at.positions,
            **imported.details,
        },
    }
    _write(out, imported, provenance)
    return {"layer": attrs["layer"], "format": format, **firing(imported.encoder, activations)}


def _write(out: Path, imported: Imported, provenance: dict[str, Any]) -> None:
    """An imported encoder gets cafe's checkpoint; cafe's own SAE keeps its weights and fingerprint, with the
    source recorded and the other study's manifest dropped (this study's images are what it is checked against)."""
    if isinstance(imported.encoder, SAEEncoder):
        save_import(out, imported.encoder, provenance)
        return
    blob = torch.load(provenance["source"]["path"], map_location="cpu", weights_only=True)
    meta = {key: value for key, value in blob["meta"].items() if key != "manifest_hash"}
    save_torch(out, {**blob, "meta": {**meta, "source": provenance["source"]}})


def check_trained_at(imported: Imported, attrs: dict[str, Any], source: Path, activations: Path) -> None:
    """The SAE must read what the layer file holds: its width, layer, backbone and the residual stream."""
    at, encoder = imported.trained_at, imported.encoder
    where = f"{source} (trained at {at.hook})"
    if at.site != RESIDUAL:
        raise CafeError(
            f"{where}: an SAE of the {at.site} site; cafe reads the residual stream after a block only "
            f"(MLP and attention outputs are not supported yet)"
        )
    if encoder.d_in != int(attrs["width"]):
        raise CafeError(
            f"{where}: SAE input width {encoder.d_in}, but {activations} ({attrs['backbone']}, layer "
            f"{attrs['layer']}) has width {attrs['width']}: another backbone?"
        )
    negative = at.block is not None and at.block < 0  # counted from the end: the tower's depth is needed
    layer = at.layer(tower_shape(attrs["backbone"]).depth if negative else 0)
    if layer is not None and layer != int(attrs["layer"]):
        raise CafeError(
            f"{where}: trained on layer {layer} (the residual after block {layer}), but {activations} is layer "
            f"{attrs['layer']}; set this SAE's layer in params `layers` (or its path in sae.source.path)"
        )
    ours, theirs = backbone_signature(str(attrs["backbone"])), backbone_signature(at.backbone or "")
    if ours and theirs and any(a and b and a != b for a, b in zip(ours, theirs)):
        raise CafeError(
            f"{where}: trained on {at.backbone} ({theirs[0]}/{theirs[1]}), but the study's backbone is "
            f"{attrs['backbone']} ({ours[0]}/{ours[1]}): size or patch differ"
        )


def backbone_signature(name: str) -> tuple[str | None, int | None] | None:
    """(size, patch) of a ViT named the OpenCLIP way (ViT-B-16), the Hugging Face way (clip-vit-base-patch16)
    or ViT-Prisma's (open-clip:laion/CLIP-ViT-B-32-...); None when the name says neither."""
    match = VIT_NAME.search(name)
    if match is None:
        return None
    size = SIZES.get(match.group(1).lower())
    return size, int(match.group(2)) if match.group(2) else None


def _layout(activations: str | os.PathLike) -> TokenLayout:
    """The token layout recorded in a layer's activation file."""
    with open_layer(activations) as handle:
        return TokenLayout.from_attrs(layer_attrs(handle), str(activations))


def _tokens_at(activations: str | os.PathLike, positions: str) -> np.ndarray:
    """The analysis tokens at `positions` of about SAMPLES tokens' images spread over the analysis set, (n, D)."""
    blocks, mask = [], np.array(_layout(activations).mask(positions))
    for _, block in iter_analysis(activations, READ_TOKENS, max_tokens=SAMPLES):
        kept = block[:, mask]
        blocks.append(kept.reshape(-1, kept.shape[-1]))
    return np.concatenate(blocks)


@torch.no_grad()
def firing(sae: torch.nn.Module, activations: str | os.PathLike) -> dict[str, Any]:
    """L0 and the dead fraction over the analysis tokens the SAE applies to (no reconstruction: encoder only)."""
    active, fired, n = 0.0, torch.zeros(sae.n_latents, dtype=torch.bool), 0
    mask = np.array(_layout(activations).mask(sae.positions))
    for _, block in iter_analysis(activations, READ_TOKENS, width=sae.d_in):
        h = torch.from_numpy(block[:, mask]).reshape(-1, sae.d_in)
        z = sae.encode(h) > 0
        active, fired, n = active + z.sum().item(), fired | z.any(0), n + len(h)
    return {"l0": active / max(n, 1), "dead_fraction": 1 - fired.float().mean().item(), "tokens": n}


def content_hash(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """The layer's metrics file, in the keys `cafe sae-summary` collects (no training: steps 0, no rates)."""
    write_json(path, {"explained_variance": None, "tokens_per_s": None, "steps": 0, **metrics})
