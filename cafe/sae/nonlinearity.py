"""SAE activation functions by name (params `sae.activation`): how latents are made from pre-activations in
training and at inference, and what each needs from the training loop. Adding one is a class and a line in
`ACTIVATIONS`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cafe.errors import CafeError

if TYPE_CHECKING:  # torch loads with the first batch: the names (params validation) need none of it
    import torch


class Nonlinearity:
    """One SAE activation: `train` in training (may look at the whole batch), `infer` at inference."""

    name: str
    l1_penalty: bool  # the loss adds l1 * sum(z) (sparsity by penalty, not by construction)
    learns_threshold: bool  # an inference threshold is estimated from batches after training

    def train(self, pre: torch.Tensor, k: int) -> torch.Tensor:
        """Latents of a training batch of pre-activations (B, m)."""
        raise NotImplementedError

    def infer(self, pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """Latents at inference, token by token (any leading shape)."""
        raise NotImplementedError


class ReLU(Nonlinearity):
    """The paper's SAE: z = ReLU(pre), sparse through the L1 penalty."""

    name, l1_penalty, learns_threshold = "relu", True, False

    def train(self, pre: torch.Tensor, k: int) -> torch.Tensor:
        return pre.relu()

    def infer(self, pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return pre.relu()


class BatchTopK(Nonlinearity):
    """BatchTopK: training keeps the batch's k*B largest (positive) pre-activations; inference keeps those above
    the threshold learnt after training, so a token's latents do not depend on its batch."""

    name, l1_penalty, learns_threshold = "batchtopk", False, True

    def train(self, pre: torch.Tensor, k: int) -> torch.Tensor:
        flat = pre.relu().flatten()
        keep = flat.topk(min(k * pre.shape[0], flat.numel())).indices
        return flat.new_zeros(flat.shape).scatter(0, keep, flat[keep]).view_as(pre)

    def infer(self, pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return pre * (pre > threshold)


ACTIVATIONS: dict[str, Nonlinearity] = {cls.name: cls() for cls in (ReLU, BatchTopK)}


def nonlinearity(name: str) -> Nonlinearity:
    """The activation called `name`, or an error listing the known ones."""
    if name not in ACTIVATIONS:
        raise CafeError(f"params: sae.activation must be one of {sorted(ACTIVATIONS)}, not {name!r}")
    return ACTIVATIONS[name]
