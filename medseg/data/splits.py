"""Seeded case splits carved from the training cases: a validation hold-out, or nnU-Net-style k folds.

Test cases never enter these functions: callers pass the training cases only, so model selection never sees a
test case. Both functions sort the case ids first, so the split depends on the set of cases and the seed, not on
the order in which files were listed.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["SPLIT_SEED", "VAL_FRACTION", "kfold_split", "train_val_split"]

#: Fraction of the training cases held out for validation (model selection) by default.
VAL_FRACTION = 0.2
#: Seed of the validation split (TransUNet's training seed, as the BTCV fallback test split).
SPLIT_SEED = 1234


def train_val_split(
    case_ids: Sequence[Hashable], val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED
) -> tuple[list, list]:
    """(train, validation) case ids: a seeded permutation of the sorted ids, ``round(val_fraction·n)`` held out.

    At least one case is held out and at least one is kept for training; fewer than two cases is an error.
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError(f"case ids are not unique: {sorted(case_ids)}")
    if len(ids) < 2:
        raise ValueError(f"a validation split needs at least 2 training cases, got {len(ids)}: {ids}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = min(max(round(val_fraction * len(ids)), 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def kfold_split(case_ids: Sequence[Hashable], fold: int, n_folds: int = 5, seed: int = SPLIT_SEED) -> tuple[list, list]:
    """(train, validation) case ids of fold ``fold`` of ``n_folds``, as nnU-Net's 5-fold cross-validation.

    The sorted ids are permuted with ``seed`` and dealt into ``n_folds`` near-equal folds; fold ``k`` validates on
    the k-th and trains on the others. Each case is validated in exactly one fold.
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError(f"case ids are not unique: {sorted(case_ids)}")
    if not 2 <= n_folds <= len(ids):
        raise ValueError(f"n_folds must be between 2 and the number of cases ({len(ids)}), got {n_folds}")
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    order = np.random.default_rng(seed).permutation(len(ids))
    held = set(np.array_split(order, n_folds)[fold].tolist())
    val = sorted(ids[i] for i in sorted(held))
    train = sorted(ids[i] for i in range(len(ids)) if i not in held)
    return train, val
