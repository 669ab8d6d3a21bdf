"""The Matryoshka sparse autoencoder of one layer, its config and its self-describing checkpoint.

    z = act(W_e (s*h - b_d)),   h_hat = W_d z + b_h      (h_hat approximates s*h)

`s` is a fixed input scale (so that E||s h||^2 = d, stored in the checkpoint), `act` is ReLU (the paper,
with an L1 penalty) or BatchTopK (a threshold learned in training is used at inference, as in Bussmann et
al. 2024). Matryoshka: the reconstruction loss is summed over nested prefixes of the latents, so the first
features carry the coarsest concepts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.io.features import FeatureFile
from cafe.sae.config import SAEConfig
from cafe.sae.encoder import SAEEncoder
from cafe.sae.nonlinearity import nonlinearity

CHECKPOINT_VERSION = 1
IMPORTED = "import"  # meta["kind"] of an SAE read from another tool's file (`cafe sae-import`)


class MatryoshkaSAE(nn.Module):
    """SAE over one layer's residual stream; `encode` takes raw residuals and applies the input scale."""

    positions = "all"  # the tokens it is applied to (cafe.tokens.TokenLayout.mask): trained on any token

    def __init__(self, d_in: int, n_latents: int, activation: str = "relu", k: int = 16):
        super().__init__()
        self.d_in, self.n_latents, self.activation, self.k = d_in, n_latents, activation, k
        self.nonlinearity = nonlinearity(activation)
        self.W_e = nn.Parameter(torch.empty(n_latents, d_in))
        self.W_d = nn.Parameter(torch.empty(d_in, n_latents))
        self.b_d = nn.Parameter(torch.zeros(d_in))
        self.b_h = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("threshold", torch.tensor(0.0))  # BatchTopK inference threshold
        nn.init.kaiming_uniform_(self.W_d, a=5**0.5)
        with torch.no_grad():
            self.W_d /= self.W_d.norm(dim=0, keepdim=True)
            self.W_e.copy_(self.W_d.T)

    def pre_activation(self, h: torch.Tensor, n_first: int | None = None) -> torch.Tensor:
        """W_e (s*h - b_d) for raw residuals h (..., d_in); only the first `n_first` latents if given."""
        return (h * self.scale - self.b_d) @ self.W_e[:n_first].T

    def encode(self, h: torch.Tensor, n_first: int | None = None) -> torch.Tensor:
        """Latents z (..., n_latents) of raw residuals h (..., d_in), as used at inference; only the first
        `n_first` latents if given (cheap when a few features of a wide SAE are needed)."""
        return self.activate(self.pre_activation(h, n_first))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The inference non-linearity on pre-activations (ReLU, or BatchTopK's learnt threshold)."""
        return self.nonlinearity.infer(pre, self.threshold)

    def rule_input(self, h: torch.Tensor) -> torch.Tensor:
        """The input of the affine map under the LRP rules (no per-token norm here)."""
        return h

    def row_weights(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, c) with pre = h . w + c for each row's feature: the affine map the epsilon rule sees."""
        rows = self.W_e[features]
        return rows * self.scale, -(rows @ self.b_d)

    def activate_rows(self, pre: torch.Tensor, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """z of each row's feature from its pre-activation."""
        return self.activate(pre)

    def encode_train(self, h: torch.Tensor) -> torch.Tensor:
        """Latents in training (BatchTopK keeps the batch's k*B largest pre-activations)."""
        return self.nonlinearity.train(self.pre_activation(h), self.k)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction of the scaled residual s*h."""
        return z @ self.W_d.T + self.b_h

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Keep decoder columns at unit norm (so the L1 penalty cannot be dodged by scaling)."""
        self.W_d /= self.W_d.norm(dim=0, keepdim=True).clamp_min(1e-8)


def fingerprint(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """A short hash of weights and config: annotations and features name the exact SAE they belong to."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def save_checkpoint(path: str | Path, sae: MatryoshkaSAE, config: SAEConfig, meta: dict[str, Any]) -> str:
    """Write weights + config + input scale + provenance atomically; return the fingerprint."""
    return _write(path, sae, {"d_in": sae.d_in, "n_latents": sae.n_latents, "config": config.settings(), **meta})


def save_import(path: str | Path, encoder: SAEEncoder, meta: dict[str, Any]) -> str:
    """Write the encoder of an SAE imported from another tool (cafe/sae/formats/) and where it came from, in the
    checkpoint every step reads; return the fingerprint."""
    return _write(path, encoder, {"kind": IMPORTED, **encoder.settings(), **meta})


def _write(path: str | Path, sae: nn.Module, meta: dict[str, Any]) -> str:
    """The checkpoint: state dict, meta (versioned) and the fingerprint of both, written atomically."""
    from cafe.io import save_torch

    state = {k: v.detach().cpu() for k, v in sae.state_dict().items()}
    meta = {"version": CHECKPOINT_VERSION, **meta}
    fp = fingerprint(state, {k: v for k, v in meta.items() if k != "metrics"})  # same weights + config, same fp
    save_torch(path, {"state_dict": state, "meta": meta, "fingerprint": fp})
    return fp


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a frozen SAE (cafe's MatryoshkaSAE, or an imported SAEEncoder) and its metadata (config, layer,
    backbone, fingerprint, ...)."""
    path = Path(path)
    if not path.is_file():
        raise CafeError(f"{path}: SAE checkpoint not found (has the `sae` step run for this layer?)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta, state = blob["meta"], blob["state_dict"]
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CafeError(f"{path}: not a readable cafe SAE checkpoint ({exc}); re-run the `sae` step") from exc
    if meta.get("kind") == IMPORTED:
        sae = SAEEncoder.from_state(meta, state)
    else:
        config = parse_section(SAEConfig, meta["config"], "sae")
        sae = MatryoshkaSAE(meta["d_in"], meta["n_latents"], config.activation, config.k)
        sae.load_state_dict(state)
    meta = {**meta, "fingerprint": blob["fingerprint"]}
    return sae.to(device).eval().requires_grad_(False), meta


def check_sae(meta: dict, ff: FeatureFile, path: str) -> None:
    """The SAE must be the one the features were found with."""
    if meta.get("layer", ff.layer) != ff.layer:
        raise CafeError(f"{path}: SAE of layer {meta['layer']}, but {ff.path} is layer {ff.layer}")
    if ff.sae_fingerprint and ff.sae_fingerprint != meta["fingerprint"]:
        raise CafeError(
            f"{ff.path}: made with SAE {ff.sae_fingerprint}, but {path} is {meta['fingerprint']}; "
            f"re-run the features step"
        )
