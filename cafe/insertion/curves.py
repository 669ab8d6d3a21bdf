"""Insertion and deletion curves of many targets from batched, truncated forwards.

A curve of S steps needs 2S distinct images (insertion steps 0..S; deletion shares both ends with
insertion: deleting nothing is the full image, deleting everything is the canvas). All of them go
through `FeatureTarget` in batches of `batch_size` images, never one forward per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from cafe.feature_target import FeatureTarget
from cafe.insertion.orders import positions

Scalar = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (pixels, tokens, features) -> (B,)


def keep_masks(orders: np.ndarray, counts: np.ndarray) -> torch.Tensor:
    """(C, 2S, P) masks of the patches taken from the image: insertion steps 0..S, then deletion steps 1..S-1."""
    pos = torch.as_tensor(positions(orders))[:, None, :]
    counts = torch.as_tensor(counts)[None, :, None]
    return torch.cat([pos < counts, pos >= counts[:, 1:-1]], dim=1)


def compose(images: torch.Tensor, canvases: torch.Tensor, masks: torch.Tensor, patch: int) -> torch.Tensor:
    """Pixels of each row: the image where the patch mask (n, P) is set, the canvas elsewhere."""
    grid = math.isqrt(masks.shape[-1])
    pixel = masks.view(-1, grid, grid).repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return torch.where(pixel[:, None].to(images.device), images, canvases)


@torch.inference_mode()
def measure(
    target: FeatureTarget,
    images: torch.Tensor,
    canvases: torch.Tensor,
    masks: torch.Tensor,
    image_of: np.ndarray,
    tokens: np.ndarray,
    features: np.ndarray,
    batch_size: int,
    scalar: Scalar | None = None,
) -> np.ndarray:
    """`scalar` (default: z) for every (curve c, masked image m) of masks (C, M, P), batched over all C*M
    images; returns (C, M)."""
    scalar = scalar or target
    n_curves, n_masks = masks.shape[:2]
    flat = masks.reshape(n_curves * n_masks, -1)
    curve = np.repeat(np.arange(n_curves), n_masks)
    keep, copy_of = distinct_rows(np.column_stack([image_of[curve], tokens[curve], features[curve], flat.numpy()]))
    backbone, out = target.backbone, []
    for start in range(0, len(keep), batch_size):
        picked = keep[start : start + batch_size]
        rows = curve[picked]
        img = torch.as_tensor(image_of[rows], device=images.device)
        pixels = compose(images[img], canvases[img], flat[picked], backbone.patch_size)
        z = scalar(backbone.normalize(pixels), torch.as_tensor(tokens[rows]), torch.as_tensor(features[rows]))
        out.append(z.float().cpu())
    return torch.cat(out)[copy_of].view(n_curves, n_masks).numpy()


def distinct_rows(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first occurrence of each distinct row, in order; for every row, the position of its copy among them):
    one target's seeds share the empty and full images and often their first steps, measured once."""
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    return first[order], position[inverse.ravel()]


def split_curves(z: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, 2S) measurements from `keep_masks` order -> insertion and deletion curves, each (C, S+1)."""
    insertion = z[:, : steps + 1]
    deletion = np.concatenate([z[:, steps : steps + 1], z[:, steps + 1 :], z[:, :1]], axis=1)
    return insertion, deletion


def curves(
    target: FeatureTarget,
    images: torch.Tensor,
    canvases: torch.Tensor,
    orders: np.ndarray,
    counts: np.ndarray,
    image_of: np.ndarray,
    tokens: np.ndarray,
    features: np.ndarray,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Insertion and deletion z curves (C, S+1) for orders (C, P); row c uses image/canvas image_of[c]."""
    z = measure(target, images, canvases, keep_masks(orders, counts), image_of, tokens, features, batch_size)
    return split_curves(z, len(counts) - 1)
