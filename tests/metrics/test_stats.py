"""Paired statistics: Wilcoxon signed-rank by hand, bootstrap by a plain loop, the per-structure comparison table."""

import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from medseg.metrics import bootstrap_mean_ci, paired_comparison, wilcoxon_signed_rank
from medseg.metrics.stats import MIN_PAIRS, mean_std_n, to_markdown


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


def test_bootstrap_of_one_value_is_empty_not_a_zero_width_interval():
    assert all(np.isnan(bootstrap_mean_ci(np.array([0.3]))))


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


def test_fewer_than_five_pairs_carry_a_caveat_with_the_smallest_attainable_p():
    base = per_case_table({"liver": [0.5] * 5})
    better = per_case_table({"liver": [0.6, 0.7, 0.8, 0.9, 1.0]})
    four = paired_comparison(better[better.case != "c4"], base, ["dice"], n_resamples=100)
    five = paired_comparison(better, base, ["dice"], n_resamples=100)
    assert MIN_PAIRS == 5 and (four.n == 4).all() and (five.n == 5).all()
    assert (five.caveat == "").all()
    # 4 positive differences: scipy's exact two-sided p is the smallest any 4 pairs can give
    smallest = scipy_stats.wilcoxon([0.1, 0.2, 0.3, 0.4]).pvalue
    assert four.p_value.iloc[0] == pytest.approx(smallest) == pytest.approx(0.125)
    assert all("n = 4 < 5" in text and f"{smallest:.3g}" in text for text in four.caveat)


def test_one_pair_has_n_1_and_no_ci():
    table = paired_comparison(per_case_table({"liver": [0.9]}), per_case_table({"liver": [0.8]}), ["dice"])
    row = table.iloc[0]
    assert row.n == 1 and np.isnan(row.ci_low) and np.isnan(row.ci_high)
    assert row.p_value == 1.0 and row.caveat == "n = 1 < 5: Wilcoxon p cannot go below 1; no CI from one pair"


def test_mean_std_n_leaves_the_spread_of_one_run_empty():
    runs = pd.DataFrame({"loss": ["a", "b", "b", "b"], "dice": [0.5, 0.2, 0.4, 0.9]})
    table = mean_std_n(runs, ["loss"], ["dice"])
    assert list(table.columns) == ["n", "dice", "dice std"]
    assert table.loc["a", "n"] == 1 and table.loc["a", "dice"] == 0.5 and np.isnan(table.loc["a", "dice std"])
    assert table.loc["b", "n"] == 3
    assert table.loc["b", "dice std"] == pytest.approx(statistics.stdev([0.2, 0.4, 0.9]))  # sample std, ddof 1


def test_markdown_shows_a_missing_value_as_a_dash_never_nan_or_zero():
    table = pd.DataFrame({"n": [1], "dice": [0.5], "dice std": [np.nan]}, index=pd.Index(["a"], name="loss"))
    header, _, row = ([cell.strip() for cell in line.split("|")[1:-1]] for line in to_markdown(table).splitlines())
    assert header == ["loss", "n", "dice", "dice std"]
    assert row == ["a", "1", "0.50", "–"]
