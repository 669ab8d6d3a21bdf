"""PatchSAE (`SparseAutoencoder.save_model` in src/sae_training): a `.pt` holding {"cfg": its pickled
ViTSAERunnerConfig, "state_dict": ...}.

    cfg          d_in, expansion_factor, block_layer (index into Hugging Face CLIP's
                 vision_model.encoder.layers; -2 is the second-to-last), module_name (resid: the layer's output),
                 class_token, model_name (e.g. openai/clip-vit-base-patch16)
    weights      W_enc [d_in, d_sae], b_enc, W_dec, b_dec

Its encode: ReLU((x - b_dec) W_enc + b_enc) on every token (CLS and patches). The pickled config is read
without PatchSAE's code: its classes become plain field holders.
"""

from __future__ import annotations

from pathlib import Path

from cafe.errors import CafeError
from cafe.sae.encoder import SAEEncoder
from cafe.sae.formats.base import RESIDUAL, Imported, Options, TrainedAt, fields, read_pickled_config, tensor

OPTIONS: dict[str, str] = {}
TOOL_MODULES = ("sae_training", "src")  # where its config class lives, as pickled


def read(path: Path, options: Options) -> Imported:
    """The encoder of a PatchSAE checkpoint."""
    blob = read_pickled_config(path, TOOL_MODULES)
    if not (isinstance(blob, dict) and "cfg" in blob and "state_dict" in blob):
        raise CafeError(f"{path}: not a PatchSAE checkpoint ({{'cfg', 'state_dict'}})")
    cfg, state = fields(blob["cfg"]), blob["state_dict"]
    if cfg.get("gated_sae"):
        raise CafeError(f"{path}: a gated PatchSAE; only the standard ReLU SAE is supported")
    d_in = int(cfg.get("d_in", 768))
    d_sae = int(cfg.get("d_sae") or d_in * int(cfg.get("expansion_factor", 64)))
    encoder = SAEEncoder(
        tensor(state, "W_enc", path, (d_in, d_sae)).T,
        tensor(state, "b_enc", path, (d_sae,)),
        tensor(state, "b_dec", path, (d_in,)),
        positions="all",
    )
    block, module = int(cfg.get("block_layer", -2)), cfg.get("module_name", "resid")
    hook = f"vision_model.encoder.layers[{block}] ({module})"
    site = RESIDUAL if module == "resid" else module
    return Imported(encoder, TrainedAt(block, site, "all", cfg.get("model_name"), hook), {"module_name": module})
