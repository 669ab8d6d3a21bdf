"""cafe's batched KernelSHAP: captum's sampling and weights, an exact solve on known games, and the same maps as
captum's KernelShap when both are given the same coalitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import KernelShap as CaptumKernelShap

from cafe.config import parse_section
from cafe.erf import ErfConfig, make_method
from cafe.erf.command import compute_erf
from cafe.erf.kernelshap import (
    ENDPOINT_WEIGHT,
    KernelShap,
    distinct_scenes,
    draw_coalitions,
    kernel_weights,
    solve_surrogates,
    unique_values,
)
from cafe.feature_target import FeatureTarget
from cafe.io.features import FeatureFile

LAYER = 2
TOKENS = torch.tensor([0, 5, 11])
# captum fits its surrogate with sklearn in float32 (it hands float32 arrays to LinearRegression), cafe in float64:
# the two solutions differ by float32 rounding amplified by the design's conditioning (the 1e6 endpoint weights
# give sqrt(1e6) = 1e3 between the weighted rows). Measured gap on the tiny tower: 1e-6 to 3e-6 of the map's
# scale; 1e-4 leaves room for other BLAS builds, while a wrong weight, sign or coalition gives O(1) differences.
CAPTUM_RTOL = 1e-4


def test_coalitions_start_with_everyone_and_no_one_then_follow_the_shapley_kernel():
    players, samples = 8, 40_002
    coalitions = draw_coalitions(players, samples, seed=0)
    assert coalitions.shape == (samples, players) and coalitions.dtype == torch.bool
    assert coalitions[0].all() and not coalitions[1].any()
    sizes = coalitions[2:].sum(1)
    assert sizes.min() >= 1 and sizes.max() <= players - 1
    kernel = torch.tensor([(players - 1) / (k * (players - k)) for k in range(1, players)])
    share = torch.bincount(sizes - 1, minlength=players - 1).double() / len(sizes)
    torch.testing.assert_close(share, kernel.double() / kernel.sum(), atol=0.01, rtol=0)
    members = coalitions[2:][sizes == 2].double().mean(0)  # within a size, every player equally likely
    torch.testing.assert_close(members, torch.full((players,), 2 / players).double(), atol=0.02, rtol=0)
    torch.testing.assert_close(coalitions, draw_coalitions(players, samples, seed=0))  # seeded


def test_endpoints_get_captums_infinite_weight_stand_in():
    coalitions = draw_coalitions(6, 10, seed=1)
    weights = kernel_weights(coalitions)
    assert weights[:2].tolist() == [ENDPOINT_WEIGHT] * 2 and (weights[2:] == 1).all()


def test_solver_recovers_every_additive_game_exactly_in_one_solve():
    players, targets = 10, 5
    coalitions = draw_coalitions(players, 200, seed=2)
    gen = torch.Generator().manual_seed(0)
    contributions, offsets = torch.randn(targets, players, generator=gen), torch.randn(targets, generator=gen)
    values = coalitions.double() @ contributions.double().T + offsets.double()  # (S, B)
    coef = solve_surrogates(coalitions, values, kernel_weights(coalitions))
    torch.testing.assert_close(coef, contributions.double(), rtol=0, atol=1e-9)


def test_underdetermined_fit_is_the_minimum_norm_one():
    """Fewer coalitions than players: the fit interpolates, with the smallest coefficients (as lstsq returns)."""
    players = 12
    coalitions = draw_coalitions(players, 6, seed=3)
    values = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coef = solve_surrogates(coalitions, values, torch.ones(6, dtype=torch.float64))
    design = torch.cat([torch.ones(6, 1, dtype=torch.float64), coalitions.double()], 1)
    full = torch.linalg.lstsq(design, values, driver="gelsd").solution  # intercept column included
    fitted = values - values.mean(0) - (coalitions.double() - coalitions.double().mean(0)) @ coef.T
    assert fitted.abs().max() < 1e-9  # interpolates
    assert (coef.norm(dim=1) <= full[1:].norm(dim=0) + 1e-9).all()


@pytest.fixture(scope="module")
def world(tiny_backbone, tiny_sae):
    target = FeatureTarget(tiny_backbone, tiny_sae, LAYER)
    images = torch.rand(len(TOKENS), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    features = target.latents(tiny_backbone.normalize(images))[torch.arange(len(TOKENS)), TOKENS].argmax(-1)
    return target, images, features


def captum_maps(target: FeatureTarget, pixels, canvas, tokens, features, coalitions) -> torch.Tensor:
    """captum's KernelShap, one target at a time, fed `coalitions` in place of its own draws."""
    patch, grid = target.backbone.patch_size, target.backbone.grid
    mask = torch.arange(grid * grid).view(1, 1, grid, grid).repeat_interleave(patch, 2).repeat_interleave(patch, 3)

    def given(_inputs, **_kwargs):
        for row in coalitions:
            yield row[None].long()

    maps = []
    for b in range(len(pixels)):
        explainer = CaptumKernelShap(target)
        explainer.perturb_func = given  # same coalitions; captum's own weights, evaluation and sklearn fit
        attr = explainer.attribute(
            pixels[b : b + 1],
            baselines=canvas[b : b + 1],
            additional_forward_args=(tokens[b : b + 1], features[b : b + 1]),
            feature_mask=mask,
            n_samples=len(coalitions),
            perturbations_per_eval=8,
        )
        maps.append(attr[:, 0, ::patch, ::patch])
    return torch.cat(maps)


@pytest.mark.parametrize("samples", [48, 12])  # 12 < 16 players: the underdetermined, minimum-norm case
def test_batched_kernelshap_gives_captums_maps_from_the_same_coalitions(world, samples):
    target, images, features = world
    config = parse_section(ErfConfig, {"kernelshap": {"samples": samples, "forward_batch": 10}}, "erf")
    method = make_method("kernelshap", target, config)
    pixels = target.backbone.normalize(images)
    canvas = torch.zeros_like(pixels)
    coalitions = draw_coalitions(target.backbone.grid**2, samples, seed=4)
    ours = method.maps_for(coalitions, pixels, canvas, TOKENS, features)
    reference = captum_maps(target, pixels, canvas, TOKENS, features, coalitions)
    scale = reference.abs().amax((1, 2), keepdim=True)
    assert ((ours - reference).abs() <= CAPTUM_RTOL * scale).all(), ((ours - reference).abs() / scale).max()


@pytest.mark.parametrize("solver", ["batched", "captum"])
def test_either_solver_is_pinned_to_the_endpoints(world, solver):
    """captum stays selectable; both solvers' maps add up to z(I) - z(canvas) (the 1e6 endpoint weights)."""
    target, images, features = world
    config = parse_section(ErfConfig, {"kernelshap": {"samples": 24, "solver": solver}}, "erf")
    out = make_method("kernelshap", target, config).explain(images[:1], TOKENS[:1], features[:1])
    gap = out.maps.sum((1, 2)) + out.absorbed
    assert (out.absorbed.abs() <= 1e-3 * gap.abs() + 1e-5).all(), (out.absorbed, gap)


def test_mixing_patch_embeddings_equals_embedding_the_mixed_image(tiny_backbone):
    """The batched solver's premise, over many random coalitions: the token sequence of an image whose absent
    patches show the canvas is the image's embedding at present patches and the canvas's elsewhere."""
    gen = torch.Generator().manual_seed(5)
    pixels, canvas = torch.randn(3, 3, 32, 32, generator=gen), torch.randn(3, 3, 32, 32, generator=gen)
    grid, patch = tiny_backbone.grid, tiny_backbone.patch_size
    coalitions = torch.rand(40, grid * grid, generator=gen) < torch.rand(40, 1, generator=gen)
    masks = coalitions.view(-1, 1, 1, grid, grid).repeat_interleave(patch, 3).repeat_interleave(patch, 4)
    embedded = tiny_backbone.embed(torch.where(masks, pixels, canvas).flatten(0, 1)).view(40, 3, grid * grid + 1, -1)
    present = torch.cat([torch.ones(40, 1, dtype=torch.bool), coalitions], 1)[:, None, :, None]
    mixed = torch.where(present, tiny_backbone.embed(pixels), tiny_backbone.embed(canvas))
    torch.testing.assert_close(mixed, embedded, rtol=1e-5, atol=1e-5)


class ForwardCounter:
    """Counts the tower's forwards (calls of Backbone.run_blocks from the first block) and the sequences they ran."""

    def __init__(self, backbone, monkeypatch):
        self.forwards = self.sequences = 0
        run_blocks = backbone.run_blocks

        def counted(tokens, start, stop):
            if start == 0:
                self.forwards, self.sequences = self.forwards + 1, self.sequences + len(tokens)
            return run_blocks(tokens, start, stop)

        monkeypatch.setattr(backbone, "run_blocks", counted)


@pytest.mark.parametrize(("samples", "forward_batch"), [(64, 48), (64, 300), (20, 7)])
def test_the_batched_solver_runs_fewer_forwards_than_captum_and_no_more_sequences(
    world, monkeypatch, samples, forward_batch
):
    """Each distinct coalition once, z(image) and z(canvas) among them: ceil(distinct / per forward) forwards,
    against captum's two for z plus ceil(samples / batch_size) per target."""
    target, images, features = world
    counts, maps = {}, {}
    for solver in ("batched", "captum"):
        config = parse_section(
            ErfConfig,
            {"batch_size": 8, "kernelshap": {"samples": samples, "forward_batch": forward_batch, "solver": solver}},
            "erf",
        )
        with monkeypatch.context() as patch:
            counter = ForwardCounter(target.backbone, patch)
            maps[solver] = make_method("kernelshap", target, config).explain(images, TOKENS, features)
        counts[solver] = (counter.forwards, counter.sequences)
    b = len(TOKENS)
    distinct = len(torch.unique(draw_coalitions(target.backbone.grid**2, samples, seed=0), dim=0))
    assert counts["batched"] == (-(-distinct // max(1, forward_batch // b)), distinct * b)
    assert counts["captum"] == (2 + b * -(-samples // 8), 2 * b + b * samples)
    assert counts["batched"][0] < counts["captum"][0] and counts["batched"][1] <= counts["captum"][1]
    torch.testing.assert_close(maps["batched"].value, maps["captum"].value, rtol=1e-5, atol=1e-6)


def test_batched_values_equal_forwards_of_the_masked_images(world):
    """coalition_values (mixed embeddings, distinct coalitions) against the plain truncated forward of each masked
    image: the same z up to float rounding."""
    target, images, features = world
    pixels = target.backbone.normalize(images)
    canvas = torch.zeros_like(pixels)
    coalitions = draw_coalitions(target.backbone.grid**2, 30, seed=6)
    values = unique_values(target, pixels, canvas, TOKENS, features, coalitions, forward_batch=16)
    grid, patch = target.backbone.grid, target.backbone.patch_size
    masks = coalitions.view(-1, 1, 1, grid, grid).repeat_interleave(patch, 3).repeat_interleave(patch, 4)
    with torch.no_grad():
        direct = torch.stack([target(torch.where(m, pixels, canvas), TOKENS, features) for m in masks])
    torch.testing.assert_close(values, direct, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("budget_sequences", [1, 5, 9])
def test_a_cpu_forward_holds_what_the_memory_bound_allows_and_values_do_not_depend_on_it(
    world, monkeypatch, budget_sequences
):
    """On a CPU the activation bound caps the sequences of a forward below `forward_batch` (whole coalitions, at
    least one); the coalitions' values are the same however they are split."""
    from cafe.erf import kernelshap

    target, images, features = world
    pixels = target.backbone.normalize(images)
    canvas, b = torch.zeros_like(pixels), len(TOKENS)
    coalitions = draw_coalitions(target.backbone.grid**2, 40, seed=7)
    reference = unique_values(target, pixels, canvas, TOKENS, features, coalitions, forward_batch=1000)
    per_sequence = target.backbone.n_tokens * 4 * target.backbone.width * 4
    monkeypatch.setattr(kernelshap, "CPU_FORWARD_BYTES", budget_sequences * per_sequence)
    assert kernelshap.sequences_per_forward(target.backbone, 1000) == budget_sequences
    with monkeypatch.context() as patch:
        counter = ForwardCounter(target.backbone, patch)
        values = unique_values(target, pixels, canvas, TOKENS, features, coalitions, forward_batch=1000)
    distinct = len(torch.unique(coalitions, dim=0))
    assert counter.forwards == -(-distinct // max(1, budget_sequences // b))
    torch.testing.assert_close(values, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", range(4))
def test_targets_of_one_image_share_its_forwards_and_get_the_values_they_get_alone(world, monkeypatch, case):
    """Generated batches where several targets (other tokens, features) show the same image: blocks 1..L-1 run
    once per distinct image and coalition, and every target's coalition values are those of its batch of one."""
    target, images, _ = world
    gen = torch.Generator().manual_seed(case)
    n = 5 + case
    image_of = torch.randint(0, 2 + case % 2, (n,), generator=gen)
    pixels = target.backbone.normalize(images[image_of])
    canvas = torch.zeros_like(pixels)
    tokens = torch.randint(0, target.backbone.n_tokens, (n,), generator=gen)
    features = torch.randint(0, target.sae.W_e.shape[0], (n,), generator=gen)
    coalitions = draw_coalitions(target.backbone.grid**2, 24, seed=case)
    with monkeypatch.context() as patch:
        counter = ForwardCounter(target.backbone, patch)
        shared = unique_values(target, pixels, canvas, tokens, features, coalitions, forward_batch=10_000)
    one = [(pixels[[b]], canvas[[b]], tokens[[b]], features[[b]]) for b in range(n)]
    alone = torch.cat([unique_values(target, *args, coalitions, forward_batch=10_000) for args in one], 1)
    assert counter.sequences == len(torch.unique(coalitions, dim=0)) * len(torch.unique(image_of))
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", range(6))
def test_distinct_scenes_index_each_targets_image_and_canvas(case):
    """Over generated batches with repeats: the scenes are distinct and each target's index points at its own image
    and canvas."""
    gen = torch.Generator().manual_seed(case)
    library = torch.rand(4, 3, 8, 8, generator=gen)
    image_of = torch.randint(0, 4, (9,), generator=gen)
    canvas_of = torch.randint(0, 2, (9,), generator=gen)
    pixels, canvas = library[image_of], library[canvas_of]
    first, scene_of = distinct_scenes(pixels, canvas)
    assert torch.equal(pixels[first][scene_of], pixels) and torch.equal(canvas[first][scene_of], canvas)
    assert len(first) == len({(int(i), int(c)) for i, c in zip(image_of, canvas_of)})


def test_the_erf_step_batches_kernelshap_by_image_and_writes_the_maps_of_the_row_major_batches(world):
    """`cafe erf` groups KernelSHAP's targets by image (each image's targets in one batch, where they share forwards);
    every map, value and remainder is the one row-major batches of the same size give."""
    target, _, _ = world
    gen = torch.Generator().manual_seed(3)
    library = torch.rand(5, 3, 32, 32, generator=gen)
    image = torch.randint(0, 5, (6, 3), generator=gen).numpy()  # 18 targets on 5 images, rows interleave them
    token = torch.randint(0, target.backbone.n_tokens, (6, 3), generator=gen).numpy()
    zeros = np.zeros((6, 3), np.float32)
    grid, names = target.backbone.grid, np.arange(6)
    ff = FeatureFile("f.h5", LAYER, grid, "", "", names, image, token, zeros, zeros[..., None], zeros[:, 0], names < 0)
    config = parse_section(ErfConfig, {"batch_size": 4, "kernelshap": {"samples": 24}}, "erf")
    batches = []

    def load(indices):
        batches.append(sorted(set(indices.tolist())))
        return library[torch.as_tensor(indices)]

    grouped = compute_erf(make_method("kernelshap", target, config), ff, load, config.batch_size)
    # each image's targets in one batch, or split once where a batch ends: at most one image shared per boundary
    assert sum(len(b) for b in batches) <= len(np.unique(image)) + len(batches) - 1

    class RowMajor(KernelShap):
        batch_by_image = False

    plain = compute_erf(RowMajor(target, config), ff, lambda i: library[torch.as_tensor(i)], config.batch_size)
    for name in ("maps", "target_value", "absorbed"):
        np.testing.assert_allclose(getattr(grouped, name), getattr(plain, name), rtol=1e-5, atol=1e-6)
