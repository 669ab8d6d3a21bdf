"""What a trained SAE is judged by, on held-out tokens (the analysis images, never seen in training; CLS and
patches, registers left out as in training): explained variance, L0 and the dead fraction; plus the input
statistics and the BatchTopK inference threshold."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from cafe.io.activations import iter_analysis, layer_attrs, open_layer
from cafe.sae.model import MatryoshkaSAE
from cafe.tokens import TokenLayout

EVAL_TOKENS = 1 << 15  # held-out tokens for the metrics (whole analysis images, up to this many tokens)
READ_TOKENS = 1 << 12  # tokens per read and per encode while evaluating


@dataclass(frozen=True)
class InputStats:
    """Scale s with E||s h||^2 = d_in, the mean of s*h and its total variance E||s h - mean||^2."""

    scale: float
    mean: torch.Tensor
    variance: float


def input_stats(sample: torch.Tensor) -> InputStats:
    """Normalisation statistics from a sample of raw tokens (n, d_in)."""
    scale = math.sqrt(sample.shape[1] / sample.pow(2).sum(1).mean().item())
    x = sample * scale
    mean = x.mean(0)
    return InputStats(scale, mean, (x - mean).pow(2).sum(1).mean().item())


@torch.no_grad()
def estimate_threshold(sae: MatryoshkaSAE, batches: Iterable[torch.Tensor]) -> float:
    """BatchTopK's inference threshold: the mean over batches of the smallest activation the batch kept."""
    minima = []
    for h in batches:
        z = sae.encode_train(h)
        minima.append(z[z > 0].min().item() if (z > 0).any() else 0.0)
    return sum(minima) / max(len(minima), 1)


@torch.no_grad()
def evaluate(
    sae: MatryoshkaSAE, activations: str | os.PathLike, device: torch.device, max_tokens: int = EVAL_TOKENS
) -> dict[str, float]:
    """Explained variance, mean L0 and dead fraction of the inference encoder on the analysis tokens."""
    n, sse, sum_sq, l0 = 0, 0.0, 0.0, 0.0
    total = torch.zeros(sae.d_in, dtype=torch.float64, device=device)
    fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=device)
    with open_layer(activations, sae.d_in) as handle:
        readable = TokenLayout.from_attrs(layer_attrs(handle), str(activations)).readable()
    for _, block in iter_analysis(activations, READ_TOKENS, max_tokens, width=sae.d_in):
        h = torch.from_numpy(block[:, readable]).reshape(-1, sae.d_in).to(device)
        x, z = h * sae.scale, sae.encode(h)
        sse += (x - sae.decode(z)).pow(2).sum().item()
        sum_sq += x.pow(2).sum().item()
        total += x.sum(0, dtype=torch.float64)
        l0 += (z > 0).sum().item()
        fired |= (z > 0).any(0)
        n += len(h)
    variance = sum_sq - total.pow(2).sum().item() / n
    return {
        "explained_variance": 1 - sse / variance,
        "l0": l0 / n,
        "dead_fraction": 1 - fired.float().mean().item(),
        "eval_tokens": n,
    }
