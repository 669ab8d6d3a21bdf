"""`cafe features`: top activations of the first N SAE features over the analysis images: per feature, the top-k
distinct images by the feature's maximum over tokens, the argmax token, and the feature's activation map on
each of them. Register tokens (cafe.tokens) are never read: their activations count as 0. Written as the
features contract (`cafe.io.features`).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cafe.config import parse_section
from cafe.devices import resolve_device
from cafe.errors import CafeError
from cafe.features.config import FeaturesConfig
from cafe.io.activations import iter_analysis, layer_attrs, open_layer
from cafe.io.features import write_features
from cafe.sae.encoder import SAEEncoder
from cafe.sae.model import MatryoshkaSAE, load_sae
from cafe.tokens import TokenLayout

log = logging.getLogger(__name__)

READ_TOKENS = 1 << 13  # analysis tokens read and encoded at a time


class TopImages:
    """Running top-k distinct images per feature, with argmax tokens and activation maps."""

    def __init__(self, n_features: int, k: int, layout: TokenLayout):
        self.layout = layout
        n_tokens = layout.n_tokens
        self.value = torch.full((n_features, k), -torch.inf)
        self.row = torch.full((n_features, k), -1, dtype=torch.long)
        self.token = torch.zeros((n_features, k), dtype=torch.long)
        self.act_map = torch.zeros((n_features, k, n_tokens))
        self.max_value = torch.zeros(n_features)
        self.n_active = torch.zeros(n_features, dtype=torch.long)
        self.fires_cls = torch.zeros(n_features, dtype=torch.bool)
        self.fires_patch = torch.zeros(n_features, dtype=torch.bool)

    def update(self, first_row: int, z: torch.Tensor) -> None:
        """Merge a block of images' activations z (b, T, N), whose first image is analysis row `first_row`."""
        if self.layout.n_registers:  # registers are never features' tokens
            z = z.clone()
            z[:, self.layout.registers.start : self.layout.registers.stop] = 0
        best, token = z.max(dim=1)  # (b, N): each image enters once per feature, at its argmax token
        active = best > 0
        self.max_value = torch.maximum(self.max_value, best.max(0).values)
        self.n_active += active.sum(0)
        if self.layout.has_cls:
            self.fires_cls |= (z[:, self.layout.cls] > 0).any(0)
        self.fires_patch |= (z[:, self.layout.patches] > 0).any(1).any(0)
        rows = torch.arange(first_row, first_row + len(z)).expand(z.shape[2], -1)
        values = torch.cat([self.value, torch.where(active, best, -torch.inf).T], 1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, : self.value.shape[1]]
        self.value = values.gather(1, order)
        self.row = torch.cat([self.row, rows], 1).gather(1, order)
        self.token = torch.cat([self.token, token.T], 1).gather(1, order)
        maps = torch.cat([self.act_map, z.permute(2, 0, 1)], 1)
        self.act_map = maps.gather(1, order[..., None].expand(-1, -1, maps.shape[2]))

    def arrays(self, analysis_image: np.ndarray) -> dict[str, np.ndarray]:
        """The output datasets; empty slots get image/row -1, value 0 and a zero map."""
        empty = torch.isinf(self.value)
        row = self.row.masked_fill(empty, -1).numpy()
        return {
            "feature": np.arange(len(self.value), dtype=np.int64),
            "image": np.where(row >= 0, analysis_image[np.maximum(row, 0)], -1).astype(np.int64),
            "analysis_row": row.astype(np.int64),
            "token": self.token.masked_fill(empty, 0).numpy().astype(np.int64),
            "value": self.value.masked_fill(empty, 0).numpy().astype(np.float32),
            "act_map": self.act_map.masked_fill(empty[..., None], 0).numpy().astype(np.float32),
            "max_value": self.max_value.numpy().astype(np.float32),
            "n_active_images": self.n_active.numpy().astype(np.int64),
            "cls_only": (self.fires_cls & ~self.fires_patch).numpy(),
        }


def _check_match(sae_meta: dict, attrs: dict, sae_path: Path, activations: Path) -> None:
    """The SAE must belong to this layer file: same layer, and same backbone and manifest where recorded."""
    for key in ("layer", "backbone", "pretrained", "manifest_hash"):
        if key in sae_meta and sae_meta[key] != attrs[key]:
            raise CafeError(
                f"{sae_path}: SAE has {key} {sae_meta[key]!r} but {activations} has {attrs[key]!r}; "
                f"re-run the `sae` step for this activation file"
            )


@torch.no_grad()
def top_images(
    sae: MatryoshkaSAE | SAEEncoder, activations: str | os.PathLike, config: FeaturesConfig, device: torch.device
) -> dict[str, np.ndarray]:
    """Stream the analysis images once, encoding the first n_features latents at the tokens the SAE was trained on
    (an imported SAE of patch tokens is zero at CLS); the output datasets."""
    if config.n_features > sae.n_latents:
        raise CafeError(f"params: features.n_features = {config.n_features} exceeds the SAE's {sae.n_latents} latents")
    with open_layer(activations, sae.d_in) as handle:
        analysis_image, layout = handle["analysis_image"][:], TokenLayout.from_attrs(handle.attrs, str(activations))
    top = TopImages(config.n_features, config.top_k, layout)
    trained = torch.tensor(layout.mask(sae.positions), device=device)[:, None]  # the SAE's tokens only
    with tqdm(total=len(analysis_image), desc="features", unit="img") as bar:
        for first_row, block in iter_analysis(activations, READ_TOKENS, width=sae.d_in):
            z = sae.encode(torch.from_numpy(block).to(device), n_first=config.n_features) * trained
            top.update(first_row, z.cpu())
            bar.update(len(block))
    return top.arrays(analysis_image)


def find_features(
    activations: str | os.PathLike,
    sae_path: str | os.PathLike,
    out: str | os.PathLike,
    config: FeaturesConfig,
    device: str = "auto",
) -> None:
    """Write the features file of one layer."""
    sae, meta = load_sae(sae_path, resolve_device(device))
    with open_layer(activations, sae.d_in) as handle:
        attrs = layer_attrs(handle)
    _check_match(meta, attrs, Path(sae_path), Path(activations))
    arrays = top_images(sae, activations, config, sae.W_e.device)
    write_features(
        out,
        arrays,
        {
            "layer": attrs["layer"],
            **TokenLayout.from_attrs(attrs, str(activations)).attrs(),
            "top_k": config.top_k,
            "sae_fingerprint": meta["fingerprint"],
            "backbone": attrs["backbone"],
            "manifest_hash": attrs["manifest_hash"],
        },
    )
    active = arrays["n_active_images"] > 0
    log.info(
        "layer %d: %d of %d features active on the analysis images, %d CLS-only -> %s",
        attrs["layer"],
        active.sum(),
        config.n_features,
        arrays["cls_only"].sum(),
        out,
    )


def run_features(args: argparse.Namespace) -> None:
    """CLI: top activations of one layer's SAE features."""
    find_features(
        args.activations, args.sae, args.out, parse_section(FeaturesConfig, args.params, "features"), args.device
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe features`."""
    parser = subparsers.add_parser("features", help="top-activating images and tokens of the first SAE features")
    parser.add_argument("--params", required=True, help="params.yaml `features:` section as JSON")
    parser.add_argument("--activations", required=True, type=Path, help="layer{L}.h5 from `cafe activations`")
    parser.add_argument("--sae", required=True, type=Path, help="layer{L}.pt from `cafe sae`")
    parser.add_argument("--out", required=True, type=Path, help="features HDF5 to write (layer{L}.h5)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    parser.set_defaults(func=run_features)
