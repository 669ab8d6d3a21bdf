"""KernelSHAP with one player per patch, absent patches showing the mean canvas (params: erf.kernelshap).

Two solvers of the same estimator (Lundberg & Lee 2017, as captum's `KernelShap` implements it):

- `batched` (default): the coalitions are drawn once on the device and shared by every target of the batch (as
  the captum path does too: it reseeds per target); each distinct coalition is evaluated once (z(image) and
  z(canvas) are the everyone and no-one coalitions), for all targets, in forwards of about `forward_batch`
  sequences (fewer on a CPU: `CPU_FORWARD_BYTES`) that start from the image's and the canvas's patch embeddings
  mixed per token (each computed once); targets of one image share blocks 1..L-1 (`cafe erf` batches them together);
  one weighted least squares in float64 gives every target's map at once.
- `captum`: captum's `KernelShap`, one target at a time, kept as the reference.

Sampling and weights are captum's: the first two coalitions are all players and none, each with weight 1e6
(captum's stand-in for the infinite kernel weight that pins the surrogate to f(all) and f(none)); every other
coalition draws its size k in 1..M-1 with p(k) proportional to (M - 1) / (k (M - k)) and then a uniform subset of
that size, with weight 1 (the Shapley kernel is in the sampling). The surrogate is a linear model with intercept
fitted by weighted least squares, minimum-norm when fewer coalitions than players leave it underdetermined
(what sklearn's LinearRegression, captum's solver, returns).
"""

from __future__ import annotations

import torch
from captum.attr import KernelShap as CaptumKernelShap

from cafe.backbone import Backbone
from cafe.erf.base import Attribution
from cafe.erf.methods import CanvasMethod
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget

ENDPOINT_WEIGHT = 1e6  # captum's KernelShap.inf_weight
# On a CPU a forward's MLP hidden activation (sequences x tokens x 4 width, float32) stays within this: larger ones
# miss the caches and, past glibc's 32 MiB mmap threshold, take fresh pages at every op. Profiled on the demo tower
# at one thread: 256 sequences a forward (34 MB) spent ~1.5x the CPU time per sequence of 16-64 (2-8 MB), and
# made the batched solver no faster than captum's 16-image forwards.
CPU_FORWARD_BYTES = 8 << 20


def draw_coalitions(players: int, samples: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(samples, players) bool: all players, none, then samples - 2 Shapley-kernel draws, on `device` (players >= 2)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    sizes = torch.arange(1, players, device=device, dtype=torch.float64)
    n = max(samples - 2, 0)
    k = torch.multinomial((players - 1) / (sizes * (players - sizes)), n, replacement=True, generator=generator)
    ranks = torch.rand(n, players, device=device, generator=generator).argsort(1).argsort(1)
    drawn = ranks <= k[:, None]  # k + 1 players: the multinomial's index 0 is size 1
    everyone = torch.ones(1, players, dtype=torch.bool, device=device)
    return torch.cat([everyone, ~everyone, drawn])[:samples]


def kernel_weights(coalitions: torch.Tensor) -> torch.Tensor:
    """Regression weight of each coalition: 1e6 for all players and none (captum's), 1 otherwise."""
    size = coalitions.sum(1)
    endpoint = (size == 0) | (size == coalitions.shape[1])
    return torch.where(endpoint, ENDPOINT_WEIGHT, 1.0).to(torch.float64)


def solve_surrogates(coalitions: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Coefficients (B, M) of the weighted linear fits values[:, b] ~ c_b + coalitions @ w_b, all B at once.

    As sklearn's LinearRegression (captum's solver): centre by the weighted means (the intercept), scale rows by
    sqrt(weight), then the minimum-norm least-squares solution, here through the pseudo-inverse of the shared
    (S, M) design in float64, so the cost of the solve does not grow with B."""
    x = coalitions.to(torch.float64)
    y = values.to(torch.float64)
    w = weights.to(torch.float64)[:, None]
    x_c = x - (w * x).sum(0) / w.sum()
    y_c = y - (w * y).sum(0) / w.sum()
    root = w.sqrt()
    return (torch.linalg.pinv(root * x_c) @ (root * y_c)).T


def sequences_per_forward(backbone: Backbone, forward_batch: int) -> int:
    """At most `forward_batch` sequences a forward; on a CPU also at most CPU_FORWARD_BYTES of MLP hidden activation
    (a ViT's MLP is 4x its width)."""
    if backbone.device.type != "cpu":
        return forward_batch
    return max(1, min(forward_batch, CPU_FORWARD_BYTES // (backbone.n_tokens * 4 * backbone.width * 4)))


def coalition_values(
    target: FeatureTarget,
    pixels: torch.Tensor,
    canvas: torch.Tensor,
    tokens: torch.Tensor,
    features: torch.Tensor,
    coalitions: torch.Tensor,
    forward_batch: int,
) -> torch.Tensor:
    """z of every target under every coalition (S, B): present patches from the image, absent from the canvas.

    The patch embedding (conv with stride = kernel = patch; CLS, registers, positions, pre-norm: all per token) maps
    each patch on its own, so a masked image's token sequence is the image's embedding at present patches and the
    canvas's elsewhere: both are embedded once and mixed per token, and only the blocks run per coalition, in
    truncated forwards of about `sequences_per_forward` sequences (whole coalitions x all B targets per forward)."""
    b, players = len(pixels), coalitions.shape[1]
    scenes, scene_of = distinct_scenes(pixels, canvas)  # targets of one image share its sequences up to block L
    with torch.no_grad():
        inside, outside = target.backbone.embed(pixels[scenes]), target.backbone.embed(canvas[scenes])  # (U, T, D)
    prefix = target.backbone.layout.n_prefix  # CLS and registers: the same in both sequences
    if inside.shape[1] != prefix + players:
        raise CafeError(
            f"KernelSHAP: {target.backbone.name} has {inside.shape[1]} tokens, not {prefix} prefix tokens + "
            f"{players} patches; mixing embeddings per patch does not apply (use erf.kernelshap.solver: captum)"
        )
    kept = torch.ones(len(coalitions), prefix, dtype=torch.bool, device=coalitions.device)
    present = torch.cat([kept, coalitions], 1)[:, None, :, None]  # (S, 1, T, 1)
    per_forward = max(1, sequences_per_forward(target.backbone, forward_batch) // b)
    values = []
    with torch.no_grad():
        for chunk in present.split(per_forward):
            hidden = target.before_layer(torch.where(chunk, inside, outside).flatten(0, 1))  # (c * U, T, D)
            rows = (torch.arange(len(chunk), device=hidden.device)[:, None] * len(scenes) + scene_of).flatten()
            z = target.from_hidden(hidden[rows], tokens.repeat(len(chunk)), features.repeat(len(chunk)))
            values.append(z.view(len(chunk), b))
    return torch.cat(values)


def distinct_scenes(pixels: torch.Tensor, canvas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the first target of each distinct (image, canvas) pair; each target's pair among them): targets of one image
    (other tokens or features) see the same coalitions, so blocks 1..L-1 run once for all of them."""
    keys = torch.cat([pixels.flatten(1), canvas.flatten(1)], 1)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    rows = torch.arange(len(keys), device=keys.device)
    first = torch.full((int(inverse.max()) + 1,), len(keys), dtype=torch.long, device=keys.device)
    return first.scatter_reduce(0, inverse, rows, "amin"), inverse


def unique_values(
    target: FeatureTarget,
    pixels: torch.Tensor,
    canvas: torch.Tensor,
    tokens: torch.Tensor,
    features: torch.Tensor,
    coalitions: torch.Tensor,
    forward_batch: int,
) -> torch.Tensor:
    """`coalition_values` with each distinct coalition evaluated once, rows in the order of `coalitions` (the
    Shapley kernel favours the smallest and largest coalitions, of which there are few: the demo's 256 draws over
    64 patches hold 250 distinct ones, and the all/none pair is always there)."""
    distinct, inverse = torch.unique(coalitions, dim=0, return_inverse=True)
    return coalition_values(target, pixels, canvas, tokens, features, distinct, forward_batch)[inverse]


class KernelShap(CanvasMethod):
    """KernelSHAP with one player per patch; absent patches show the mean canvas (params: erf.kernelshap)."""

    name = "kernelshap"
    batch_by_image = True

    def _explain(self, pixels: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> Attribution:
        """The batched solver: z(image) and z(canvas) are the values of the everyone and no-one coalitions, so they
        come from the same forwards as every other coalition (captum's solver: the base class's two extra ones)."""
        if self.config.kernelshap.solver == "captum":
            return super()._explain(pixels, tokens, features)
        config, players = self.config.kernelshap, self.backbone.grid**2
        coalitions = draw_coalitions(players, max(config.samples, 2), config.seed, pixels.device)
        maps, values = self._fit(coalitions, pixels, torch.zeros_like(pixels), tokens, features)
        z, z_canvas = values[0], values[1]  # draw_coalitions puts everyone first, no one second
        return Attribution(maps, z, (z - z_canvas) - maps.sum((1, 2)))

    def _canvas_maps(self, pixels, canvas, tokens, features) -> torch.Tensor:
        return self._captum_maps(pixels, canvas, tokens, features)

    def maps_for(self, coalitions, pixels, canvas, tokens, features) -> torch.Tensor:
        """Maps (B, grid, grid) from given coalitions (S, M): evaluate, then one weighted least squares."""
        return self._fit(coalitions, pixels, canvas, tokens, features)[0]

    def _fit(self, coalitions, pixels, canvas, tokens, features) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps (B, grid, grid) and the coalitions' values (S, B)."""
        forward_batch = self.config.kernelshap.forward_batch
        values = unique_values(self.target, pixels, canvas, tokens, features, coalitions, forward_batch)
        coef = solve_surrogates(coalitions, values, kernel_weights(coalitions))
        return coef.to(pixels.dtype).view(len(pixels), self.backbone.grid, self.backbone.grid), values

    def _captum_maps(self, pixels, canvas, tokens, features) -> torch.Tensor:
        """The reference: captum's KernelShap per target, each reseeded, `erf.batch_size` perturbations a forward."""
        patch, grid = self.backbone.patch_size, self.backbone.grid
        players = torch.arange(grid * grid, device=pixels.device).view(1, 1, grid, grid)
        mask = players.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
        config, explainer = self.config.kernelshap, CaptumKernelShap(self.target)
        maps = []
        for b in range(len(pixels)):  # captum samples per example anyway; one seed each keeps a map batch-independent
            with torch.random.fork_rng(devices=[pixels.device] if pixels.is_cuda else []):
                torch.manual_seed(config.seed)
                attr = explainer.attribute(
                    pixels[b : b + 1],
                    baselines=canvas[b : b + 1],
                    additional_forward_args=(tokens[b : b + 1], features[b : b + 1]),
                    feature_mask=mask,
                    n_samples=config.samples,
                    perturbations_per_eval=self.config.batch_size,
                )
            maps.append(attr[:, 0, ::patch, ::patch])  # every pixel of a patch carries the patch's value
        return torch.cat(maps)
