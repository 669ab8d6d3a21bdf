"""ViT-Prisma (`SparseAutoencoder.save_model`): a `.pt` holding {"cfg": its pickled VisionModelSAERunnerConfig,
"state_dict": ...}, or weights beside a `config.json` with the same fields (its Hugging Face releases).

    cfg          d_in, expansion_factor (d_sae = d_in x expansion_factor), architecture (standard),
                 activation_fn_str (relu | topk, k in activation_fn_kwargs), normalize_activations (layer_norm by
                 default, constant_norm_rescale, none), hook_point_layer, layer_subtype (hook_resid_post...),
                 cls_token_only, use_patches_only, model_name
    weights      W_enc [d_in, d_sae], b_enc, W_dec, b_dec (SAELens names)

Its encode is SAELens's with b_dec always subtracted: ReLU or TopK (ReLU of the k largest) of
(norm(h) - b_dec) W_enc + b_enc, norm as in SAELens (layer_norm: (h - mean) / (unbiased std + 1e-5)). The pickled
config is read without ViT-Prisma: its classes become plain field holders.
"""

from __future__ import annotations

from pathlib import Path

from cafe.errors import CafeError
from cafe.sae.formats import saelens
from cafe.sae.formats.base import Imported, Options, fields, read_json, read_pickled_config, read_state

OPTIONS: dict[str, str] = {}
ACTIVATIONS = {"relu": "standard", "topk": "topk"}


def read(path: Path, options: Options) -> Imported:
    """The encoder of a ViT-Prisma SAE file (or of the one .pt file in a downloaded folder)."""
    path = _weights_file(path)
    blob = read_pickled_config(path, ("vit_prisma",)) if path.suffix == ".pt" else read_state(path)
    if isinstance(blob, dict) and "cfg" in blob and "state_dict" in blob:
        cfg, state = fields(blob["cfg"]), blob["state_dict"]
    elif (path.parent / "config.json").is_file():
        cfg, state = read_json(path.parent / "config.json"), blob
    else:
        raise CafeError(f"{path}: neither {{'cfg', 'state_dict'}} nor weights beside a config.json (ViT-Prisma)")
    return from_prisma_config(cfg, dict(state), path, options)


def _weights_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    found = sorted(path.glob("*.pt"))
    if len(found) != 1:
        raise CafeError(f"{path}: a ViT-Prisma folder needs exactly one .pt file (has {[p.name for p in found]})")
    return found[0]


def from_prisma_config(cfg: dict, state: dict, path: Path, options: Options) -> Imported:
    """The encoder from ViT-Prisma's config fields, through the SAELens reader with Prisma's conventions."""
    activation = cfg.get("activation_fn_str", "relu")
    if cfg.get("architecture", "standard") != "standard" or activation not in ACTIVATIONS:
        raise CafeError(
            f"{path}: ViT-Prisma {cfg.get('architecture')} SAE with {activation!r}: only standard SAEs with "
            f"{list(ACTIVATIONS)} are supported"
        )
    if cfg.get("is_transcoder"):
        raise CafeError(f"{path}: a ViT-Prisma transcoder, not an SAE of one site")
    d_in = int(cfg["d_in"])
    layer, subtype = cfg.get("hook_point_layer"), cfg.get("layer_subtype", "hook_resid_post")
    layer = layer[0] if isinstance(layer, list) and len(layer) == 1 else layer
    positions = "cls" if cfg.get("cls_token_only") else "patches" if cfg.get("use_patches_only") else "all"
    as_saelens = {
        "d_in": d_in,
        "d_sae": int(cfg.get("d_sae") or d_in * int(cfg["expansion_factor"])),
        "architecture": ACTIVATIONS[activation],
        "k": (cfg.get("activation_fn_kwargs") or {}).get("k"),
        "apply_b_dec_to_input": True,
        "normalize_activations": cfg.get("normalize_activations", "layer_norm") or "none",
        "metadata": {"hook_name": f"blocks.{layer}.{subtype}", "model_name": cfg.get("model_name")},
    }
    imported = saelens.from_config(as_saelens, state, path, positions)
    imported.details["format"] = "prisma"
    return imported
