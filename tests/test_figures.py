"""Fig 3 aggregation and statistics on synthetic curves with known answers (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cafe.cli import main
from cafe.insertion.summary import curve_aucs
from cafe.stats import bootstrap_ci, holm, paired_tests, rank_agreement, trapezoid_auc

STEPS = 8


def test_auc_of_a_linear_curve_does_not_grow_with_the_number_of_steps():
    for steps in (1, 4, 16, 100):
        fraction = np.linspace(0, 1, steps + 1)
        assert trapezoid_auc(fraction, fraction) == pytest.approx(0.5)
        assert trapezoid_auc(fraction, np.ones_like(fraction)) == pytest.approx(1.0)


def test_holm_matches_the_step_down_rule_and_skips_nan():
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03, np.nan])), [0.03, 0.06, 0.06, np.nan])
    assert holm(np.array([0.5, 0.9])).max() <= 1.0


def test_paired_wilcoxon_finds_the_known_winner_and_no_winner_between_equals():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.6, 40)
    wide = pd.DataFrame(
        {"good": base + 0.1 + rng.normal(0, 0.02, 40), "bad": base, "twin": base + rng.normal(0, 0.02, 40)}
    )
    tests = paired_tests(wide, higher_is_better=True).set_index(["a", "b"])
    assert tests.loc[("good", "bad"), "winner"] == "good" and tests.loc[("good", "bad"), "p_holm"] < 1e-6
    assert tests.loc[("bad", "twin"), "winner"] == "none"
    assert (tests["p_holm"] >= tests["p"]).all()
    lower = paired_tests(wide, higher_is_better=False).set_index(["a", "b"])
    assert lower.loc[("good", "bad"), "winner"] == "bad"


def test_winner_follows_the_signed_ranks_not_an_outlier_in_the_mean():
    """a beats b by 0.02 on 29 of 30 features and loses by 3 on one: the test (and the winner) say a."""
    b = np.linspace(0.3, 0.6, 30)
    a = b + 0.02
    a[0] = b[0] - 3.0
    tests = paired_tests(pd.DataFrame({"a": a, "b": b}), higher_is_better=True).iloc[0]
    assert tests["mean_diff"] < 0 and tests["p_holm"] < 0.05 and tests["winner"] == "a"


def test_bootstrap_ci_covers_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(2.0, 1.0, 20), rng.normal(2.0, 1.0, 2000)
    lo, hi = bootstrap_ci(small, 2000)
    assert lo < small.mean() < hi and lo < 2.0 < hi
    lo_l, hi_l = bootstrap_ci(large, 500)
    assert hi_l - lo_l < (hi - lo) / 5
    assert bootstrap_ci(small, 200) == bootstrap_ci(small, 200)  # seeded


def test_rank_agreement_names_the_flipped_pairs():
    same = rank_agreement({"a": 3, "b": 2, "c": 1}, {"a": 0.9, "b": 0.5, "c": 0.1})
    assert same["kendall_tau"] == pytest.approx(1.0) and same["flipped"] == []
    assert rank_agreement({"a": 3, "b": 2, "c": 1}, {"a": 0.9, "b": 0.1, "c": 0.5})["flipped"] == [["b", "c"]]


def curve_rows(
    layer: int, method: str, canvas: str, kind: str, feature: int, auc: float, seed: int = 0
) -> pd.DataFrame:
    """One curve r(f) = f^k (insertion) or 1 - f^(1/k) (deletion) whose exact area is `auc`."""
    fraction = np.linspace(0, 1, STEPS + 1)
    recovery = fraction ** (1 / auc - 1) if kind == "insertion" else 1 - fraction ** (1 / (1 - auc) - 1)
    return pd.DataFrame(
        {
            "layer": layer,
            "method": method,
            "canvas": canvas,
            "kind": kind,
            "feature": feature,
            "rank": 0,
            "image": feature,
            "token": 1,
            "seed": seed,
            "step": np.arange(STEPS + 1),
            "fraction": fraction,
            "z": 2 * recovery,
            "recovery": recovery,
        }
    )


TRUE_AUC = {"attnlrp": 0.8, "activation": 0.65, "random": 0.5}


def write_curves(root: Path) -> tuple[list[str], list[str]]:
    """Two layers, two canvases; on the blur canvas of layer 2 activation beats attnlrp (a canvas disagreement)."""
    rng = np.random.default_rng(0)
    curves, greedy = [], []
    for layer in (1, 2):
        for method, auc in TRUE_AUC.items():
            frames = []
            for canvas in ("mean", "blur"):
                shift = 0.2 if (layer, canvas, method) == (2, "blur", "activation") else 0.0
                for feature in range(12):
                    for kind in ("insertion", "deletion"):
                        for seed in range(2):
                            a = auc + shift + rng.normal(0, 0.02)
                            frames.append(
                                curve_rows(
                                    layer, method, canvas, kind, feature, a if kind == "insertion" else 1 - a, seed
                                )
                            )
            path = root / f"layer{layer}" / f"{method}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.concat(frames).to_csv(path, index=False)
            curves.append(str(path))
        ceiling = pd.concat(
            [
                curve_rows(layer, "greedy", c, k, f, 0.9 if k == "insertion" else 0.1)
                for c in ("mean", "blur")
                for k in ("insertion", "deletion")
                for f in (0, 1)
            ]
        )
        ceiling.to_csv(root / f"layer{layer}" / "greedy.csv", index=False)
        greedy.append(str(root / f"layer{layer}" / "greedy.csv"))
    return curves, greedy


def test_fig3_writes_table_metrics_and_figure_with_known_answers(tmp_path):
    curves, greedy = write_curves(tmp_path / "insertion")
    out = {"table": tmp_path / "auc.csv", "figure": tmp_path / "fig3.png", "metrics": tmp_path / "insertion.json"}
    assert (
        main(
            [
                "fig3",
                "--params",
                json.dumps({"bootstrap": 200}),
                "--curves",
                *curves,
                "--greedy",
                *greedy,
                "--out-table",
                str(out["table"]),
                "--out-figure",
                str(out["figure"]),
                "--metrics",
                str(out["metrics"]),
            ]
        )
        == 0
    )
    fraction = np.linspace(0, 1, STEPS + 1)
    exact = {m: trapezoid_auc(fraction, fraction ** (1 / a - 1)) for m, a in {**TRUE_AUC, "greedy": 0.9}.items()}
    table = pd.read_csv(out["table"]).set_index(["layer", "method", "canvas", "kind"])
    assert list(table.columns) == ["n_features", "auc_mean", "auc_ci_low", "auc_ci_high"]
    attn = table.loc[(1, "attnlrp", "mean", "insertion")]
    assert attn["n_features"] == 12 and attn["auc_ci_low"] < exact["attnlrp"] < attn["auc_ci_high"]
    metrics = json.loads(out["metrics"].read_text())
    assert metrics["auc"]["mean"]["insertion"]["attnlrp"] > metrics["auc"]["mean"]["insertion"]["activation"]
    vs = (exact["attnlrp"] - exact["random"]) / (exact["greedy"] - exact["random"])
    assert metrics["vs_greedy"]["mean"]["insertion"]["attnlrp"] == pytest.approx(vs, abs=0.1)
    winners = {(t["scope"], t["canvas"], t["kind"], t["a"], t["b"]): t["winner"] for t in metrics["tests"]}
    assert winners["layer1", "mean", "insertion", "activation", "attnlrp"] == "attnlrp"
    assert winners["layer1", "mean", "deletion", "activation", "attnlrp"] == "attnlrp"
    assert metrics["canvas_disagreements"] == [
        "layer2 deletion: blur vs mean flip activation/attnlrp",
        "layer2 insertion: blur vs mean flip activation/attnlrp",
    ]
    assert metrics["overshoot"]["mean"]["insertion"]["random"] == 0.0
    assert out["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overshoot_is_counted_not_clipped():
    curve = curve_rows(1, "random", "mean", "insertion", 0, 0.5)
    curve.loc[curve["step"] == 4, "recovery"] = 1.3
    aucs = curve_aucs(curve)
    assert bool(aucs["overshoot"].iloc[0]) and aucs["auc"].iloc[0] > 0.5


def test_missing_or_foreign_curves_files_are_named(tmp_path, capsys):
    args = [
        "fig3",
        "--out-table",
        str(tmp_path / "t.csv"),
        "--out-figure",
        str(tmp_path / "f.png"),
        "--metrics",
        str(tmp_path / "m.json"),
        "--curves",
    ]
    assert main([*args, str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: curves file not found" in capsys.readouterr().err
    pd.DataFrame({"layer": [1]}).to_csv(tmp_path / "other.csv", index=False)
    assert main([*args, str(tmp_path / "other.csv")]) == 2
    assert "other.csv: not an insertion curves table" in capsys.readouterr().err
