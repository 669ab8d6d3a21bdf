"""Majority vote and agreement between annotators, on textbook examples with published values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cafe.annotation.agreement import (
    bootstrap_ci,
    fleiss_kappa,
    krippendorff_alpha,
    label_matrix,
    majority,
    people_agreement,
)

NAN = np.nan
# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the nominal example: 4 observers x 12 units,
# missing values; alpha (nominal) = 0.743.
KRIPPENDORFF = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
]).T  # fmt: skip
# Fleiss' kappa, the worked example of 10 subjects rated by 14 raters into 5 categories: kappa = 0.210.
FLEISS = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])  # fmt: skip


def test_krippendorff_alpha_matches_the_textbook_example_with_missing_values() -> None:
    assert krippendorff_alpha(KRIPPENDORFF) == pytest.approx(0.743, abs=5e-4)


def test_fleiss_kappa_matches_the_textbook_example() -> None:
    assert fleiss_kappa(FLEISS) == pytest.approx(0.210, abs=5e-4)


def test_perfect_agreement_is_one_and_chance_level_disagreement_is_below_zero() -> None:
    same = np.array([[1, 1], [0, 0], [1, 1], [0, 0]], float)
    assert krippendorff_alpha(same) == pytest.approx(1.0)
    assert fleiss_kappa(np.array([[0, 2], [2, 0], [0, 2], [2, 0]])) == pytest.approx(1.0)
    opposite = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], float)
    assert krippendorff_alpha(opposite) < 0


def test_agreement_is_undefined_with_one_category_or_one_rater() -> None:
    assert krippendorff_alpha(np.array([[1, 1], [1, 1]], float)) is None
    assert krippendorff_alpha(np.array([[1, NAN], [0, NAN]])) is None
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa(np.array([[1, 1], [0, 3]]))


def test_majority_counts_ties_and_unlabelled_features_instead_of_guessing() -> None:
    answers = {
        "a": pd.DataFrame({"feature": [0, 1, 2, 3], "non_local": [True, True, False, None]}),
        "b": pd.DataFrame({"feature": [0, 1, 2], "non_local": [True, False, False]}),
        "c": pd.DataFrame({"feature": [0, 2], "non_local": [False, None]}),
    }
    votes = majority(label_matrix(pd.Series([0, 1, 2, 3, 4]), answers))
    assert votes["majority"].tolist() == [True, None, False, None, None]
    assert votes["tie"].tolist() == [False, True, False, False, False]
    assert votes["n_labels"].tolist() == [3, 2, 2, 0, 0]


def test_people_agreement_states_how_many_features_each_number_rests_on() -> None:
    answers = {
        "a": pd.DataFrame({"feature": range(6), "non_local": [True, True, False, False, True, None]}),
        "b": pd.DataFrame({"feature": range(6), "non_local": [True, True, False, False, False, True]}),
    }
    result = people_agreement(label_matrix(pd.Series(range(6)), answers))
    assert (result["alpha_n_features"], result["kappa_n_features"]) == (5, 5)
    assert result["krippendorff_alpha"] == pytest.approx(krippendorff_alpha(np.array(
        [[1, 1], [1, 1], [0, 0], [0, 0], [1, 0]], float)), abs=1e-4)  # fmt: skip
    low, high = result["alpha_ci95"]
    assert low <= result["krippendorff_alpha"] <= high


def test_bootstrap_interval_is_reproducible_and_narrows_with_more_features() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 400).astype(float)
    noisy = np.where(rng.random(400) < 0.15, 1 - truth, truth)
    matrix = np.stack([truth, noisy], axis=1)
    small, large = bootstrap_ci(matrix[:40], krippendorff_alpha), bootstrap_ci(matrix, krippendorff_alpha)
    assert small == bootstrap_ci(matrix[:40], krippendorff_alpha)
    assert large[1] - large[0] < small[1] - small[0]
    assert large[0] <= krippendorff_alpha(matrix) <= large[1]
