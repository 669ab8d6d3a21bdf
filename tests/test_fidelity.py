"""The fidelity helpers of `cafe bench --fidelity` on inputs whose answers are known."""

from __future__ import annotations

import numpy as np

from cafe.bench.fidelity import GATES, SPEED_SAE, insertion_gate, sae_steps, spread, step_verdicts, topk_overlap
from cafe.sae.train import Trainer
from cafe.stats import spearman


def test_rank_correlation_is_one_for_monotone_maps_minus_one_for_reversed_and_nan_for_constant():
    base = np.arange(16, dtype=float).reshape(1, 4, 4)
    maps = np.concatenate([base, base**3, -base, np.zeros_like(base)])
    rho = spearman(np.repeat(base, 4, axis=0).reshape(4, -1), maps.reshape(4, -1))
    np.testing.assert_allclose(rho[:3], [1.0, 1.0, -1.0])
    assert np.isnan(rho[3])


def test_rank_correlation_matches_the_textbook_formula_with_tied_ranks():
    a = np.array([[1.0, 2.0, 2.0, 3.0, 5.0]])
    b = np.array([[2.0, 1.0, 4.0, 3.0, 5.0]])
    # ranks a: 1, 2.5, 2.5, 4, 5; b: 2, 1, 4, 3, 5 -> Pearson of the ranks
    ra, rb = np.array([1, 2.5, 2.5, 4, 5]), np.array([2, 1, 4, 3, 5.0])
    expected = np.corrcoef(ra, rb)[0, 1]
    np.testing.assert_allclose(spearman(a, b), [expected])


def test_topk_overlap_counts_shared_top_patches():
    a = np.array([[9.0, 8, 7, 1, 0, 0]])
    b = np.array([[9.0, 0, 7, 8, 0, 1]])  # top 3 of b: 0, 3, 2 -> shares 0 and 2 with a's 0, 1, 2
    np.testing.assert_allclose(topk_overlap(a, b, 3), [2 / 3])
    np.testing.assert_allclose(topk_overlap(a, a, 2), [1.0])


def test_spread_reports_median_and_fifth_percentile_without_nans():
    assert spread(np.array([np.nan, *range(101)])) == {"median": 50.0, "p5": 5.0}


def test_insertion_gate_fails_on_a_flipped_ranking_or_an_auc_outside_the_ci():
    ref = {"a": {"auc": 0.8, "ci": [0.7, 0.9]}, "b": {"auc": 0.5, "ci": [0.4, 0.6]}}
    same = {"a": {"auc": 0.82, "ci": [0, 1]}, "b": {"auc": 0.45, "ci": [0, 1]}}
    flipped = {"a": {"auc": 0.71, "ci": [0, 1]}, "b": {"auc": 0.72, "ci": [0, 1]}}
    assert insertion_gate(same, ref)["same_ranking"] and all(insertion_gate(same, ref)["inside_fp32_ci"].values())
    gate = insertion_gate(flipped, ref)
    assert not gate["same_ranking"] and gate["inside_fp32_ci"] == {"a": True, "b": False}


def test_a_mode_fails_the_erf_step_when_one_method_misses_a_gate():
    good = {"spearman": {"median": 0.99, "p5": 0.9}, "topk_overlap": {"median": 0.9}}
    bad = {"spearman": {"median": 0.99, "p5": GATES["spearman_p5"] - 0.1}, "topk_overlap": {"median": 0.9}}
    record = {"modes": {"bf16": {"residual_rel_rms": 0.001, "maps": {"ig": good, "gradient": bad}}}}
    verdict = step_verdicts(record)["bf16"]
    assert verdict["activations"] and not verdict["erf"]
    assert verdict["erf_per_method"] == {"ig": True, "gradient": False}


def test_the_sae_speed_pair_trains_the_pipelines_sae_on_the_same_batches_in_both_precisions(
    tiny_backbone, tmp_path, monkeypatch
):
    """Each side of the SAE-training speed ratio does the same work: the same number of Adam steps of the pipeline's
    SAE at the tower's width, on the same batches in the same order, one in fp32 and one in bf16."""
    steps, calls = [], 3
    real = Trainer.train_step

    def spy(trainer, h):
        steps.append((trainer.precision, trainer.sae.n_latents, float(h.double().sum())))
        return real(trainer, h)

    monkeypatch.setattr(Trainer, "train_step", spy)
    jobs = sae_steps(tiny_backbone, calls, tmp_path)
    for _ in range(2):
        jobs["fp32"](), jobs["bf16"]()
    fp32, bf16 = ([s[1:] for s in steps if s[0] == mode] for mode in ("fp32", "bf16"))
    assert len(fp32) == 2 * calls and fp32 == bf16
    assert {n for n, _ in fp32} == {SPEED_SAE.expansion * tiny_backbone.width}
    assert len({total for _, total in fp32}) == calls  # distinct batches, the same ones at every run
