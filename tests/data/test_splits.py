"""Seeded validation and k-fold splits: disjoint, complete, deterministic, independent of listing order."""

import pytest

from medseg.data.splits import kfold_split, train_val_split


def test_train_val_split_is_disjoint_complete_and_seeded():
    ids = [f"case{i:03d}" for i in range(18)]
    train, val = train_val_split(ids)
    assert len(val) == 4 and len(train) == 14  # round(0.2 * 18) = 4
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(ids)
    assert train_val_split(list(reversed(ids))) == (train, val)
    assert train_val_split(ids, seed=7) != (train, val)


@pytest.mark.parametrize("n", [2, 3])
def test_train_val_split_keeps_one_case_on_each_side(n):
    train, val = train_val_split(list(range(n)))
    assert len(val) == 1 and len(train) == n - 1


@pytest.mark.parametrize("bad", [[1], [1, 1, 2]])
def test_train_val_split_refuses_too_few_or_repeated_cases(bad):
    with pytest.raises(ValueError):
        train_val_split(bad)


def test_kfold_validates_every_case_once():
    ids = list(range(11))
    vals = [kfold_split(ids, fold)[1] for fold in range(5)]
    assert sorted(c for v in vals for c in v) == ids
    assert sorted(len(v) for v in vals) == [2, 2, 2, 2, 3]
    for fold in range(5):
        train, val = kfold_split(ids, fold)
        assert set(train).isdisjoint(val) and set(train) | set(val) == set(ids)
    with pytest.raises(ValueError):
        kfold_split(ids, 5)
