"""The cropped separable EDT and the edt backend's choices against scipy's distance_transform_edt (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.transforms import _backends as backends
from medseg.transforms._cropped_edt import (
    _restore_axis,
    _tied_rows,
    bounding_box,
    estimated_work,
    squared_distance_to,
    worth_cropping,
)


def scipy_distance_to(target: np.ndarray, spacing) -> np.ndarray:
    return ndimage.distance_transform_edt(~target, sampling=spacing)


def random_sets(rng: np.random.Generator, shape) -> list[np.ndarray]:
    """A small blob, two far-apart components (empty lines and planes between them), one voxel, a box on the
    grid's edge, a sparse scatter and a set filling most of the grid."""
    blob = np.zeros(shape, bool)
    blob[tuple(slice(n // 3, n // 3 + max(1, n // 4)) for n in shape)] = True
    two = np.zeros(shape, bool)
    two[tuple(slice(0, 2) for _ in shape)] = True
    two[tuple(slice(n - 2, n) for n in shape)] = True
    one = np.zeros(shape, bool)
    one[tuple(int(rng.integers(n)) for n in shape)] = True
    edge = np.zeros(shape, bool)
    edge[(slice(0, 1), *(slice(0, max(1, n // 2)) for n in shape[1:]))] = True
    return [blob, two, one, edge, rng.random(shape) > 0.97, rng.random(shape) > 0.2]


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((37,), (0.7,)), ((23, 31), (0.8, 2.5)), ((17, 21, 13), (0.8, 0.8, 2.5)), ((9, 30, 11), (3.0, 0.5, 1.1))],
)
def test_squared_distance_matches_scipy(shape, spacing):
    rng = np.random.default_rng(len(shape))
    for target in random_sets(rng, shape):
        got = squared_distance_to(target, spacing, bounding_box(target))
        assert got.dtype == np.float32 and got.shape == shape and got.flags.c_contiguous
        np.testing.assert_allclose(np.sqrt(got), scipy_distance_to(target, spacing), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("shape", "spacing"), [((23, 31), (0.8, 2.5)), ((17, 21, 13), (0.8, 0.8, 2.5)), ((40, 9, 11), (1, 1, 1))]
)
def test_squared_distance_writes_into_out(shape, spacing):
    # the last step along axis 0 writes its lines into out directly, the others through one transposed copy
    for target in random_sets(np.random.default_rng(3), shape):
        out = np.full(shape, np.nan, np.float32)
        got = squared_distance_to(target, spacing, bounding_box(target), out=out)
        assert got is out
        np.testing.assert_allclose(np.sqrt(out), scipy_distance_to(target, spacing), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        squared_distance_to(target, spacing, bounding_box(target), out=np.empty(shape, np.float64))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_restore_axis_writes_the_lines_back_in_c_order(axis):
    grid = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    lines = np.ascontiguousarray(np.moveaxis(grid, axis, 0)).reshape(grid.shape[axis], -1)
    out = np.empty_like(grid)
    assert _restore_axis(lines, grid.shape, axis, out) is out
    np.testing.assert_array_equal(out, grid)
    np.testing.assert_array_equal(_restore_axis(lines, grid.shape, axis), grid)


def test_tied_rows_bound_the_search_and_ignore_lines_without_a_source():
    inf = np.inf
    candidates = np.array([[5, 9, inf], [2, 9, inf], [3, 4, inf], [7, 4, inf], [8, 6, inf]], np.float32)
    best = candidates.min(0)
    tie = np.empty(3, bool)
    assert _tied_rows(candidates, best, best < inf, tie) == (1, 3)  # column 2 (no source) ties everywhere
    assert _tied_rows(candidates, best, None, tie) == (0, 4)
    assert _tied_rows(candidates[:, 2:], best[2:], best[2:] < inf, tie[:1]) == (0, 4)  # nothing bounds: all rows


def test_bounding_box_of_sets_and_of_nothing():
    target = np.zeros((5, 6, 7), bool)
    assert bounding_box(target) is None
    target[1, 2, 3] = target[3, 5, 4] = True
    assert bounding_box(target) == (slice(1, 4), slice(2, 6), slice(3, 5))
    assert bounding_box(np.array([False, True, True, False])) == (slice(1, 3),)


def test_small_sets_are_cropped_and_the_whole_grid_is_not():
    shape = (160, 160, 48)
    organ = (slice(60, 80), slice(50, 90), slice(20, 32))
    assert worth_cropping(organ, shape) and estimated_work(organ, shape) < 10
    assert not worth_cropping(tuple(slice(0, n) for n in shape), shape)
    # a large organ of a resampled BTCV case (estimated work 30): cropped in about half an edt pass's time
    assert worth_cropping((slice(70, 122), slice(40, 90), slice(30, 85)), (196, 142, 127))


@pytest.mark.parametrize("fill", [0.02, 0.5, 0.97])
def test_edt_backend_distance_matches_scipy_for_small_and_large_sets(fill):
    # small sets take the cropped transform, large ones edt on the box around their complement
    rng = np.random.default_rng(1)
    spacing = (0.8, 1.3, 2.5)
    target = ndimage.binary_opening(rng.random((30, 24, 14)) < fill) if fill < 0.9 else rng.random((30, 24, 14)) < fill
    target[12:18, 10:14, 5:9] = fill < 0.9  # a blob in the small set, a hole in the large one
    got = backends.EdtBackend().distance_to(target, spacing)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, scipy_distance_to(target, spacing), atol=1e-4, rtol=0)


def test_large_set_is_computed_on_the_box_around_its_complement(monkeypatch):
    calls = []
    real_edt = backends.edt.edt
    monkeypatch.setattr(backends.edt, "edt", lambda data, *a, **k: calls.append(data.shape) or real_edt(data, *a, **k))
    target = np.ones((60, 50, 20), bool)
    target[20:30, 10:15, 4:9] = False  # the complement: a 10 x 5 x 5 box, grown by one voxel
    got = backends.EdtBackend().distance_to(target, (1.0, 0.7, 2.0))
    assert calls == [(12, 7, 7)]
    np.testing.assert_allclose(got, scipy_distance_to(target, (1.0, 0.7, 2.0)), atol=1e-4, rtol=0)


def test_label_distances_match_per_label_scipy():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, (12, 10, 8)).astype(np.uint8)
    labels[:, :5] = 0  # a large label 0: edt's background, shifted up by the backend
    spacing = (0.7, 1.1, 2.0)
    expected = np.zeros(labels.shape)
    for value in range(4):
        region = labels == value
        expected[region] = ndimage.distance_transform_edt(region, sampling=spacing)[region]
    for backend in (backends.EdtBackend(), backends.ScipyBackend()):
        got = backend.label_distances(labels, spacing)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
