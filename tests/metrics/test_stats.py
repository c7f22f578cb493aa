"""Paired statistics: Wilcoxon signed-rank by hand, bootstrap by a plain loop, the per-structure comparison table."""

import numpy as np
import pandas as pd
import pytest

from medseg.metrics import bootstrap_mean_ci, paired_comparison, wilcoxon_signed_rank


def test_wilcoxon_hand_worked():
    # |d| ranks 1..5; the only negative difference has rank 2: W+ = 13, W- = 2, statistic min = 2.
    # Exact two-sided p: subsets of {1..5} with rank sum <= 2 are {}, {1}, {2}: 2 · 3/32 = 0.1875.
    statistic, p = wilcoxon_signed_rank(np.array([1.0, -2.0, 3.0, 4.0, 5.0]))
    assert statistic == 2.0
    assert p == pytest.approx(0.1875)


def test_wilcoxon_degenerate_samples():
    assert wilcoxon_signed_rank(np.zeros(4)) == (0.0, 1.0)
    assert all(np.isnan(wilcoxon_signed_rank(np.array([]))))


def test_bootstrap_matches_a_plain_loop():
    differences = np.array([0.1, -0.05, 0.2, 0.0, 0.15, 0.3, -0.1])
    rng = np.random.default_rng(7)
    means = []
    for _ in range(2500):  # one resample per draw, as the definition says
        means.append(differences[rng.integers(0, differences.size, size=differences.size)].mean())
    expected = np.quantile(means, [0.05, 0.95])
    assert bootstrap_mean_ci(differences, n_resamples=2500, confidence=0.9, seed=7) == pytest.approx(tuple(expected))


def test_bootstrap_of_a_constant_difference_is_that_constant():
    assert bootstrap_mean_ci(np.full(6, 0.25), n_resamples=100) == pytest.approx((0.25, 0.25))


def test_bootstrap_bad_arguments_raise():
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_ci(np.ones(3), confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_mean_ci(np.ones(3), n_resamples=0)


def per_case_table(dice: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"case": f"c{i}", "structure": name, "dice": value}
        for name, values in dice.items()
        for i, value in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_paired_comparison_per_structure_and_overall():
    method = per_case_table({"liver": [0.9, 0.8, 0.95, 0.7], "spleen": [0.6, np.nan, 0.8, 0.9]})
    baseline = per_case_table({"liver": [0.85, 0.8, 0.9, 0.6], "spleen": [0.7, 0.5, 0.7, 0.8]})
    table = paired_comparison(method, baseline, ["dice"], n_resamples=200).set_index("structure")
    # liver differences 0.05, 0, 0.05, 0.1 → mean 0.05
    assert table.loc["liver", "mean_difference"] == pytest.approx(0.05)
    assert table.loc["liver", "n"] == 4
    # spleen: the NaN case is left out: differences -0.1, 0.1, 0.1 over 3 pairs
    assert table.loc["spleen", "n"] == 3
    assert table.loc["spleen", "mean_difference"] == pytest.approx(0.1 / 3)
    # overall: per-case means over structures (c1: method liver only 0.8, baseline (0.8 + 0.5) / 2 = 0.65)
    method_means = [(0.9 + 0.6) / 2, 0.8, (0.95 + 0.8) / 2, (0.7 + 0.9) / 2]
    baseline_means = [(0.85 + 0.7) / 2, 0.65, (0.9 + 0.7) / 2, (0.6 + 0.8) / 2]
    assert table.loc["overall", "mean_difference"] == pytest.approx(np.mean(method_means) - np.mean(baseline_means))
    assert table.loc["liver", "ci_low"] <= 0.05 <= table.loc["liver", "ci_high"]


def test_paired_comparison_bad_tables_raise():
    table = per_case_table({"liver": [0.9]})
    with pytest.raises(ValueError, match="lacks columns"):
        paired_comparison(table, table.drop(columns="dice"), ["dice"])
    other = table.assign(case="elsewhere")
    with pytest.raises(ValueError, match="share no"):
        paired_comparison(table, other, ["dice"])
