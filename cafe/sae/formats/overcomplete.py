"""overcomplete (KempnerInstitute): `torch.save(sae.state_dict())` of an SAE with its default linear encoder. The
file holds no config, so the options say which SAE it is.

    keys         encoder.final_block.0.weight [F, d], encoder.final_block.0.bias (if any), dictionary...;
                 thresholds [F] (JumpSAE: log-thresholds)
    SAE          ReLU(W x + b); TopKSAE: the k largest of it; JumpSAE: it where it is >= exp(thresholds);
                 BatchTopKSAE at inference: it where it is >= its running threshold, which the state dict does
                 not keep (option `threshold`)

No b_dec is subtracted before the encoder (x goes in as it is).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cafe.errors import CafeError
from cafe.sae.encoder import SAEEncoder
from cafe.sae.formats.base import POSITIONS_OPTION, RESIDUAL, Imported, Options, TrainedAt, read_state, tensor

OPTIONS = {
    "architecture": "SAE | TopKSAE | JumpSAE | BatchTopKSAE (the class that saved the state dict)",
    "k": "top_k of a TopKSAE",
    "threshold": "running_threshold of a BatchTopKSAE (not in its state dict)",
    "layer": "the block whose output it was trained on (1-based, cafe's layer); the file does not say",
    **POSITIONS_OPTION,
}
ARCHITECTURES = ("SAE", "TopKSAE", "JumpSAE", "BatchTopKSAE")


def read(path: Path, options: Options) -> Imported:
    """The encoder of an overcomplete SAE state dict."""
    state = read_state(path)
    state = state.state_dict() if hasattr(state, "state_dict") else state
    if any(key.startswith("encoder.mlp_blocks") or key.startswith("encoder.final_block.1") for key in state):
        raise CafeError(f"{path}: an overcomplete SAE with an MLP or normalised encoder; only the linear one")
    architecture = options.get("architecture", "SAE")
    if architecture not in ARCHITECTURES:
        raise CafeError(f"sae.source.options.architecture must be one of {ARCHITECTURES}, not {architecture!r}")
    W_e = tensor(state, "encoder.final_block.0.weight", path)
    bias = state.get("encoder.final_block.0.bias")
    common = {"positions": options.positions()}
    if architecture == "TopKSAE":
        encoder = SAEEncoder(W_e, bias, activation="topk", k=_required(options, "k", int), **common)
    elif architecture == "JumpSAE":
        threshold = torch.exp(tensor(state, "thresholds", path, (W_e.shape[0],)))
        encoder = SAEEncoder(W_e, bias, activation="jumprelu", threshold=threshold, **common)
    elif architecture == "BatchTopKSAE":
        threshold = _required(options, "threshold", float)
        encoder = SAEEncoder(W_e, bias, activation="jumprelu", threshold=threshold, **common)
    else:
        encoder = SAEEncoder(W_e, bias, **common)
    layer = options.get("layer")
    block = None if layer is None else int(layer) - 1
    hook = "not recorded" if layer is None else f"layer {layer} (options)"
    return Imported(encoder, TrainedAt(block, RESIDUAL, encoder.positions, None, hook), {"architecture": architecture})


def _required(options: Options, key: str, kind: type) -> object:
    value = options.get(key)
    if value is None:
        raise CafeError(f"sae.source.options.{key} is needed by this overcomplete SAE (its state dict lacks it)")
    return kind(value)
