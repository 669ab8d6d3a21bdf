"""saev (`saev.nn.modeling.dump`): one JSON header line, then `torch.save(state_dict)` in the same file.

    header       current: {"schema": 2..5, "cfg": {d_model, d_sae, activation: {"cls": Relu | TopK | BatchTopK,
                 "params": {top_k, ...}}, ...}}; old: no schema (d_vit, exp_factor: ReLU), or schema 1 (cfg with
                 d_vit; "cls" Relu | TopK | BatchTopK with cfg.top_k, or an activation dict)
    weights      W_enc [d, d_sae], b_enc, W_dec [d_sae, d], b_dec; activation.threshold (BatchTopK)

Its encode: pre = x W_enc + b_enc, then ReLU, TopK (the k largest pre-activations as they are, no ReLU) or, for
BatchTopK at inference, pre [pre > threshold] (ReLU when threshold <= 0); Matryoshka changes only the training
loss. Old code encoded (x - b_dec) W_enc + b_enc and fed x = (a - mean) / scalar with
scalar = mean ||a - mean|| / sqrt(d) over a random sample of the training tokens, constants the file does not keep:
options `scaling` (auto: estimate for old files, none for current ones; estimate: saev's procedure on this study's
analysis tokens; given: `scale_mean`, `scale_scalar`) and `b_dec` (auto: subtract for files without a schema,
whose code predates saev commit e7ca004). The file records neither layer nor backbone; saev trains on patch tokens
(CLS and registers out).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from cafe.errors import CafeError
from cafe.sae.encoder import SAEEncoder
from cafe.sae.formats.base import RESIDUAL, Imported, Options, TrainedAt, read_state, tensor

OPTIONS = {
    "b_dec": "auto | subtract | ignore: whether b_dec is subtracted from the input (old saev code did)",
    "scaling": "auto | estimate | none | given: the input (a - mean) / scalar of old saev training",
    "scale_mean": "torch file with the mean (scaling: given; none: zero)",
    "scale_scalar": "the scalar (scaling: given)",
    "positions": "tokens it was trained on: patches (saev's default) | cls | all",
}
SAMPLES, SEED = 2**19, 42  # saev's n_random_samples and the seed of its sample


def read(path: Path, options: Options) -> Imported:
    """The encoder of a saev checkpoint, with its input scaling folded in where known."""
    header, state = _read_file(path)
    old = "schema" not in header or "d_vit" in header.get("cfg", {})
    cfg = header if "schema" not in header else header["cfg"]
    d = int(cfg.get("d_model") or cfg["d_vit"])
    d_sae = int(cfg.get("d_sae") or d * cfg["exp_factor"])
    kind, top_k = _activation(header, cfg)
    subtract = _choice(options, "b_dec", ("subtract", "ignore"), "subtract" if "schema" not in header else "ignore")
    scaling = _choice(options, "scaling", ("estimate", "none", "given"), "estimate" if old else "none")
    mean, scalar = _given_scaling(options, d) if scaling == "given" else (torch.zeros(d), 1.0)
    b_dec = tensor(state, "b_dec", path, (d,))
    encoder = SAEEncoder(
        tensor(state, "W_enc", path, (d, d_sae)).T,
        tensor(state, "b_enc", path, (d_sae,)),
        mean / scalar + (b_dec if subtract == "subtract" else 0),
        scale=1 / scalar,
        activation={"Relu": "relu", "TopK": "topk", "BatchTopK": "jumprelu"}[kind],
        k=top_k,
        threshold=tensor(state, "activation.threshold", path) if kind == "BatchTopK" else 0.0,
        topk_relu=False,
        positions=options.positions("patches"),
    )
    trained_at = TrainedAt(None, RESIDUAL, encoder.positions, None, "a block's output (saev files do not name it)")
    details = {"activation": kind, "schema": header.get("schema"), "b_dec": subtract, "scaling": scaling}
    return Imported(encoder, trained_at, details, needs_input_scaling=scaling == "estimate")


def _read_file(path: Path) -> tuple[dict, dict]:
    try:
        with open(path, "rb") as handle:
            header = json.loads(handle.readline())
            state = torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
    except Exception as exc:  # OSError, a bad header, or torch's many errors for a foreign file
        raise CafeError(f"{path}: not a saev checkpoint (a JSON header line, then a state dict): {exc}") from exc
    if not isinstance(header, dict) or not isinstance(state, dict):
        raise CafeError(f"{path}: not a saev checkpoint (a JSON header line, then a state dict)")
    return header, state


def _activation(header: dict, cfg: dict) -> tuple[str, int]:
    """saev's activation class name (Relu, TopK, BatchTopK) and top_k, from any header schema."""
    if "schema" not in header:
        return "Relu", 0
    if header.get("cls") in ("Relu", "TopK", "BatchTopK"):  # schema 1, first form
        return header["cls"], int(cfg.get("top_k", 32))
    activation = cfg.get("activation") or {"cls": "Relu", "params": {}}
    kind = activation.get("cls")
    if kind not in ("Relu", "TopK", "BatchTopK"):
        raise CafeError(f"saev activation {kind!r} is not supported; supported: Relu, TopK, BatchTopK")
    return kind, int(activation.get("params", {}).get("top_k", 32))


def _choice(options: Options, key: str, choices: tuple[str, ...], auto: str) -> str:
    value = options.get(key, "auto")
    if value not in ("auto", *choices):
        raise CafeError(f"sae.source.options.{key} must be one of {('auto', *choices)}, not {value!r}")
    return auto if value == "auto" else value


def _given_scaling(options: Options, d: int) -> tuple[torch.Tensor, float]:
    scalar = options.get("scale_scalar")
    if not isinstance(scalar, (int, float)) or scalar <= 0:
        raise CafeError("sae.source.options: scaling: given needs scale_scalar, a positive number")
    mean_file = options.get("scale_mean")
    mean = torch.zeros(d) if mean_file is None else read_state(Path(mean_file)).float().reshape(d)
    return mean, float(scalar)


def estimate_input_scaling(tokens: np.ndarray) -> tuple[torch.Tensor, float]:
    """saev's procedure on tokens (n, d): the mean of a seeded random sample of up to 2^19 of them, and
    scalar = mean ||a - mean|| / sqrt(d)."""
    rows = np.sort(np.random.default_rng(SEED).permutation(len(tokens))[:SAMPLES])
    sample = torch.from_numpy(np.asarray(tokens[rows], dtype=np.float32)).double()
    mean = sample.mean(0)
    scalar = (sample - mean).norm(dim=1).mean() / math.sqrt(sample.shape[1])
    return mean.float(), float(scalar)


def fold_input_scaling(encoder: SAEEncoder, mean: torch.Tensor, scalar: float) -> None:
    """Fold x = (a - mean) / scalar into an encoder read with no scaling."""
    with torch.no_grad():
        encoder.b_d.add_(mean.to(encoder.b_d) / scalar)
        encoder.scale.fill_(1 / scalar)
