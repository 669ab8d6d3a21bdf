"""dictionary_learning (saprmarks): `ae.pt` (a state dict) beside the trainer's `config.json`.

    AutoEncoder           bias [d], encoder.weight [F, d], encoder.bias, decoder.weight: ReLU(W (x - bias) + b)
    AutoEncoderTopK       b_dec, encoder.*, decoder.weight, buffers k, threshold: the k largest of
                          ReLU(W (x - b_dec) + b)
    BatchTopKSAE          the same keys: ReLU(...) [ReLU(...) > threshold] at inference (use_threshold)
    MatryoshkaBatchTopKSAE  W_enc [d, F], b_enc, W_dec, b_dec, k, threshold, group_sizes: as BatchTopK
    JumpReluAutoEncoder   W_enc [d, F], b_enc, W_dec, b_dec, threshold [F]: ReLU(pre [pre > threshold]),
                          b_dec not subtracted (its default apply_b_dec_to_input = False)

Which class: `trainer.dict_class` in config.json, else the keys. The layer is `trainer.layer` (the output of that
block), the backbone `trainer.lm_name`, the site `trainer.submodule_name`.
"""

from __future__ import annotations

from pathlib import Path

from cafe.errors import CafeError
from cafe.sae.encoder import SAEEncoder
from cafe.sae.formats.base import (
    POSITIONS_OPTION,
    RESIDUAL,
    Imported,
    Options,
    TrainedAt,
    read_json,
    read_state,
    tensor,
)

OPTIONS = POSITIONS_OPTION
CLASSES = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder")


def read(path: Path, options: Options) -> Imported:
    """The encoder of a dictionary_learning `ae.pt` (or its folder)."""
    file = path / "ae.pt" if path.is_dir() else path
    state = read_state(file)
    config_file = file.parent / "config.json"
    trainer = read_json(config_file).get("trainer", {}) if config_file.is_file() else {}
    kind = trainer.get("dict_class") or _class_from_keys(state, file)
    if kind not in CLASSES:
        raise CafeError(f"{file}: dictionary_learning class {kind!r} is not supported; supported: {list(CLASSES)}")
    encoder = _encoder(kind, state, file, options.positions())
    submodule = trainer.get("submodule_name") or ""
    site = RESIDUAL if not submodule or "resid" in submodule or "layer" in submodule else submodule
    block = trainer.get("layer")
    hook = f"layer {block} {submodule}".strip() if block is not None else "not recorded (no config.json)"
    trained_at = TrainedAt(None if block is None else int(block), site, encoder.positions, trainer.get("lm_name"), hook)
    return Imported(encoder, trained_at, {"dict_class": kind})


def _class_from_keys(state: dict, path: Path) -> str:
    if "group_sizes" in state:
        return "MatryoshkaBatchTopKSAE"
    if "W_enc" in state:
        return "JumpReluAutoEncoder"
    if "k" in state:
        return "AutoEncoderTopK"
    if "bias" in state:
        return "AutoEncoder"
    raise CafeError(f"{path}: no dictionary_learning SAE keys (has {sorted(state)}); give a config.json beside it")


def _encoder(kind: str, state: dict, path: Path, positions: str) -> SAEEncoder:
    if kind in ("MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"):
        W_e, b_e = tensor(state, "W_enc", path).T, tensor(state, "b_enc", path)
    else:
        W_e, b_e = tensor(state, "encoder.weight", path), tensor(state, "encoder.bias", path)
    n, d = W_e.shape
    if kind == "AutoEncoder":
        return SAEEncoder(W_e, b_e, tensor(state, "bias", path, (d,)), positions=positions)
    if kind == "JumpReluAutoEncoder":
        threshold = tensor(state, "threshold", path, (n,))
        return SAEEncoder(W_e, b_e, None, activation="jumprelu", threshold=threshold, positions=positions)
    b_dec = tensor(state, "b_dec", path, (d,))
    if kind == "AutoEncoderTopK":
        return SAEEncoder(W_e, b_e, b_dec, activation="topk", k=int(state["k"]), positions=positions)
    threshold = tensor(state, "threshold", path)  # compared with ReLU(pre): a negative one keeps every ReLU
    return SAEEncoder(W_e, b_e, b_dec, activation="jumprelu", threshold=threshold, positions=positions)
