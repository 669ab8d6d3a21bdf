"""SAELens (`SAE.save_model`): a folder with `cfg.json` and `sae_weights.safetensors`.

    cfg.json     d_in, d_sae, architecture (standard | topk | jumprelu), apply_b_dec_to_input,
                 normalize_activations, k and rescale_acts_by_decoder_norm (topk), metadata.hook_name and
                 metadata.model_name (older files: hook_name, model_name at the top level)
    weights      W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec; threshold [d_sae] (jumprelu)

Its encode: x = norm(h) - b_dec (if apply_b_dec_to_input), pre = x W_enc + b_enc, then ReLU, TopK (ReLU of the k
largest; pre scaled by ||W_dec|| rows first if rescale_acts_by_decoder_norm) or ReLU(pre) [pre > threshold].
normalize_activations: layer_norm is (h - mean) / (unbiased std + 1e-5) per token, constant_norm_rescale is
h sqrt(d_in) / ||h||; expected_average_only_in and covariance_whitening are folded into the weights when SAELens
finishes training and are no-ops in its encode, so here too.
"""

from __future__ import annotations

from pathlib import Path

from cafe.errors import CafeError
from cafe.sae.encoder import SAEEncoder
from cafe.sae.formats.base import (
    POSITIONS_OPTION,
    Imported,
    Options,
    read_json,
    read_safetensors,
    tensor,
    transformer_lens_hook,
)

OPTIONS = POSITIONS_OPTION
NORMS = {
    "none": "none",
    "expected_average_only_in": "none",
    "covariance_whitening": "none",
    "layer_norm": "layer_norm",
    "constant_norm_rescale": "unit_norm",
}
ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}


def read(path: Path, options: Options) -> Imported:
    """The encoder of a SAELens SAE folder (or its cfg.json)."""
    folder = path.parent if path.is_file() else path
    cfg = read_json(folder / "cfg.json")
    check_config(cfg, folder)
    state = read_safetensors(folder / "sae_weights.safetensors")
    return from_config(cfg, state, folder, options.positions())


def check_config(cfg: dict, path: Path) -> tuple[str, str]:
    """The architecture and normalisation mode, if cafe supports them."""
    architecture = cfg.get("architecture", "standard")
    norm_mode = cfg.get("normalize_activations", "none") or "none"
    if architecture not in ARCHITECTURES:
        raise CafeError(f"{path}: SAELens architecture {architecture!r} is not supported: {list(ARCHITECTURES)}")
    if norm_mode not in NORMS:
        raise CafeError(f"{path}: normalize_activations {norm_mode!r} is not one of SAELens's {list(NORMS)}")
    return architecture, norm_mode


def from_config(cfg: dict, state: dict, path: Path, positions: str) -> Imported:
    """The encoder from a SAELens config and state dict (shared with ViT-Prisma, whose SAEs are SAELens-like)."""
    architecture, norm_mode = check_config(cfg, path)
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    W_e = tensor(state, "W_enc", path, (d_in, d_sae)).T
    b_e = tensor(state, "b_enc", path, (d_sae,))
    activation = ARCHITECTURES[architecture]
    if activation == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        norms = tensor(state, "W_dec", path, (d_sae, d_in)).norm(dim=-1)
        W_e, b_e = W_e * norms[:, None], b_e * norms  # pre * ||W_dec row||, folded
    encoder = SAEEncoder(
        W_e,
        b_e,
        tensor(state, "b_dec", path, (d_in,)) if cfg.get("apply_b_dec_to_input", True) else None,
        norm=NORMS[norm_mode],
        activation=activation,
        k=int(cfg.get("k") or 0),
        threshold=tensor(state, "threshold", path, (d_sae,)) if activation == "jumprelu" else 0.0,
        positions=positions,
    )
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or ""
    backbone = meta.get("model_name") or cfg.get("model_name")
    details = {"architecture": architecture, "normalize_activations": norm_mode}
    return Imported(encoder, transformer_lens_hook(hook, encoder.positions, backbone), details)
