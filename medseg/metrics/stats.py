"""Paired comparison of two methods scored on the same cases: Wilcoxon signed-rank test and bootstrap CIs.

For each structure and metric, the per-case differences ``method − baseline`` are tested with the two-sided
Wilcoxon signed-rank test (Wilcoxon, Biometrics Bulletin 1945; ``scipy.stats.wilcoxon`` with its defaults: zero
differences dropped, exact null distribution for small samples without ties) and summarised by a percentile
bootstrap confidence interval of their mean (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993):
cases are resampled with replacement, with a seeded ``numpy`` generator, so a run is reproducible.
An ``overall`` row compares the per-case means over structures. p-values are not adjusted for the number of
structures compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["bootstrap_mean_ci", "paired_comparison", "wilcoxon_signed_rank"]


def bootstrap_mean_ci(
    differences: np.ndarray, n_resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (NaN, NaN for an empty sample).

    Resample ``i`` draws ``len(differences)`` indices with ``numpy.random.default_rng(seed).integers``, in
    batches of at most 1000 resamples (same draws as one call, bounded memory).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    values = np.asarray(differences, dtype=np.float64)
    if values.size == 0:
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
        ``mean_difference`` (method − baseline), ``ci_low``/``ci_high`` (bootstrap), ``wilcoxon_statistic``,
        ``p_value``.
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
                }
            )
    return pd.DataFrame(rows)
