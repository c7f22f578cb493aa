"""Paired comparison of two methods scored on the same cases: Wilcoxon signed-rank test and bootstrap CIs.

For each structure and metric, the per-case differences ``method − baseline`` are tested with the two-sided
Wilcoxon signed-rank test (Wilcoxon, Biometrics Bulletin 1945; ``scipy.stats.wilcoxon`` with its defaults: zero
differences dropped, exact null distribution for small samples without ties) and summarised by a percentile
bootstrap confidence interval of their mean (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993):
cases are resampled with replacement, with a seeded ``numpy`` generator, so a run is reproducible.
An ``overall`` row compares the per-case means over structures. p-values are not adjusted for the number of
structures compared.

Small samples are reported, not hidden: every row carries its ``n``; a CI of fewer than 2 values is empty (NaN,
never a zero-width interval), and below :data:`MIN_PAIRS` pairs the row's ``caveat`` says why the test and the CI
cannot be trusted (the exact two-sided Wilcoxon p cannot fall below 2/2^n). :func:`mean_std_n` summarises repeated
runs (seeds) the same way: a standard deviation of one run is empty, never 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "MIN_PAIRS",
    "bootstrap_mean_ci",
    "mean_std_n",
    "paired_comparison",
    "small_sample_caveat",
    "to_markdown",
    "wilcoxon_signed_rank",
]

#: Fewer pairs than this: the paired test and the bootstrap CI carry a caveat (at n = 4 the smallest attainable
#: two-sided Wilcoxon p is 2/2^4 = 0.125, and the bootstrap draws from only C(2n − 1, n) = 35 distinct resamples).
MIN_PAIRS = 5
#: How a missing value (NaN: a std of one run, a CI of one pair) is shown in markdown tables.
MISSING = "–"


def small_sample_caveat(n: int) -> str:
    """``""`` for ``n >= MIN_PAIRS`` pairs, else why the paired test and the bootstrap CI of ``n`` pairs mislead."""
    if n >= MIN_PAIRS:
        return ""
    if n == 0:
        return "no pairs: no test or CI"
    ci = "no CI from one pair" if n == 1 else f"bootstrap CI from only {math.comb(2 * n - 1, n)} distinct resamples"
    return f"n = {n} < {MIN_PAIRS}: Wilcoxon p cannot go below {2 / 2**n:.3g}; {ci}"


def bootstrap_mean_ci(
    differences: np.ndarray, n_resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (NaN, NaN for fewer than 2 values: one value
    has no spread to resample, and a zero-width interval would claim certainty).

    Resample ``i`` draws ``len(differences)`` indices with ``numpy.random.default_rng(seed).integers``, in
    batches of at most 1000 resamples (same draws as one call, bounded memory).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    values = np.asarray(differences, dtype=np.float64)
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):
        stop = min(start + 1000, n_resamples)
        means[start:stop] = values[rng.integers(0, values.size, size=(stop - start, values.size))].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def wilcoxon_signed_rank(differences: np.ndarray) -> tuple[float, float]:
    """(statistic, two-sided p) of the Wilcoxon signed-rank test; (0, 1) when every difference is 0, NaN if empty."""
    values = np.asarray(differences, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    if not values.any():
        return 0.0, 1.0
    result = stats.wilcoxon(values)
    return float(result.statistic), float(result.pvalue)


def paired_comparison(
    method: pd.DataFrame,
    baseline: pd.DataFrame,
    metrics: Sequence[str],
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare two per-case tables (the evaluation's CSV) structure by structure.

    Rows are paired on (``case``, ``structure``); a pair with NaN in either table is left out of that metric.

    Returns:
        One row per structure (then ``overall``) and metric: ``n`` pairs, ``mean_method``, ``mean_baseline``,
        ``mean_difference`` (method − baseline), ``ci_low``/``ci_high`` (bootstrap; NaN below 2 pairs),
        ``wilcoxon_statistic``, ``p_value``, ``caveat`` (:func:`small_sample_caveat`: empty from
        :data:`MIN_PAIRS` pairs on).
    """
    for name, table in (("method", method), ("baseline", baseline)):
        missing = sorted({"case", "structure", *metrics} - set(table.columns))
        if missing:
            raise ValueError(f"{name} table lacks columns {missing}")
    keys = ["case", "structure"]
    paired = method[keys + list(metrics)].merge(baseline[keys + list(metrics)], on=keys, suffixes=("_m", "_b"))
    if paired.empty:
        raise ValueError("the two tables share no (case, structure) pair; were they scored on the same cases?")
    overall = paired.groupby("case", sort=True)[[c for m in metrics for c in (f"{m}_m", f"{m}_b")]].mean()
    groups = [*paired.groupby("structure", sort=False), ("overall", overall)]
    rows = []
    for structure, group in groups:
        for metric in metrics:
            pair = group[[f"{metric}_m", f"{metric}_b"]].dropna()
            a, b = pair[f"{metric}_m"].to_numpy(), pair[f"{metric}_b"].to_numpy()
            low, high = bootstrap_mean_ci(a - b, n_resamples, confidence, seed)
            statistic, p_value = wilcoxon_signed_rank(a - b)
            rows.append(
                {
                    "structure": structure,
                    "metric": metric,
                    "n": len(pair),
                    "mean_method": float(a.mean()) if len(pair) else float("nan"),
                    "mean_baseline": float(b.mean()) if len(pair) else float("nan"),
                    "mean_difference": float((a - b).mean()) if len(pair) else float("nan"),
                    "ci_low": low,
                    "ci_high": high,
                    "wilcoxon_statistic": statistic,
                    "p_value": p_value,
                    "caveat": small_sample_caveat(len(pair)),
                }
            )
    return pd.DataFrame(rows)


def mean_std_n(values: pd.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Per group of ``by``: ``n`` rows, and each column's mean and sample standard deviation (``<column> std``,
    ddof = 1; NaN for a group of one row, never 0.0). Columns in the order ``n, c1, c1 std, c2, c2 std, ...``."""
    grouped = values.groupby(list(by), sort=False)[list(columns)]
    means, spreads = grouped.mean(), grouped.std(ddof=1)
    table = pd.DataFrame({"n": grouped.size()})
    for column in columns:
        table[column] = means[column]
        table[f"{column} std"] = spreads[column]
    return table


def to_markdown(table: pd.DataFrame, floatfmt: str = ".2f", index: bool = True) -> str:
    """``table`` as a markdown table with missing values (NaN) shown as ``–`` instead of ``nan``."""
    shown = table.reset_index() if index else table
    shown = shown.astype(object).where(shown.notna(), None)
    return shown.to_markdown(index=False, floatfmt=floatfmt, missingval=MISSING)
