"""The greedy ceiling: at each step insert (or delete) the patches that raise (or lower) the target most.

Each step tries every remaining patch on top of the current set, batched over candidates, and keeps the
step's best ones. Candidates are scored by the SAE pre-activation at the target, which orders them as z
does wherever z > 0 and still guides the search while a sparse feature is silent (z = 0 would tie them all).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from cafe.feature_target import FeatureTarget
from cafe.insertion.curves import measure
from cafe.insertion.orders import rank_patches


def pre_activation(
    target: FeatureTarget, pixels: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor
) -> torch.Tensor:
    """W_e (s*h - b_d) of each row's feature at its token: z before the SAE's nonlinearity, (B,)."""
    resid = target.at_tokens(pixels, tokens)
    rows = torch.arange(resid.shape[0], device=resid.device)
    return target.sae.pre_activation(resid)[rows, features.to(resid.device)]


def greedy_order(
    target: FeatureTarget,
    image: torch.Tensor,
    canvas: torch.Tensor,
    token: int,
    feature: int,
    counts: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    batch_size: int,
) -> np.ndarray:
    """Greedy patch order (P,) for one target; kind 'insertion' maximises, 'deletion' minimises the target."""
    sign = 1.0 if kind == "insertion" else -1.0
    n_patches = int(counts[-1])
    chosen: list[int] = []
    remaining = np.arange(n_patches)
    for take in np.diff(counts):
        if take == 0:
            continue
        if take < len(remaining):
            masks = _candidate_masks(chosen, remaining, n_patches, kind)
            scores = measure(
                target,
                image,
                canvas,
                masks[None],
                np.zeros(1, int),
                np.array([token]),
                np.array([feature]),
                batch_size,
                partial(pre_activation, target),
            )[0]
            best = rank_patches(sign * scores, rng)[:take]
        else:
            best = rng.permutation(len(remaining))
        chosen.extend(remaining[best].tolist())
        remaining = np.delete(remaining, best)
    return np.array(chosen)


def _candidate_masks(chosen: list[int], remaining: np.ndarray, n_patches: int, kind: str) -> torch.Tensor:
    """Keep-image masks (R, P): the chosen set plus each remaining patch in turn (inverted for deletion)."""
    masks = torch.zeros(len(remaining), n_patches, dtype=torch.bool)
    masks[:, chosen] = True
    masks[torch.arange(len(remaining)), torch.as_tensor(remaining)] = True
    return masks if kind == "insertion" else ~masks
