"""MONAI's own metric test suites, run against medseg's MONAI-signature functions with MONAI's arguments as written.

Source: Project MONAI (https://github.com/Project-MONAI/MONAI) ``tests/metrics/``: ``test_compute_meandice.py``,
``test_hausdorff_distance.py``, ``test_surface_distance.py`` (their cases are data in
tests/metrics/monai_metric_cases.py) and ``test_surface_dice.py`` (restated below, each test named after MONAI's
method, with MONAI's inputs, arguments and expectations), as of commit 8aef9a9 (1.5 release). Copyright (c) MONAI
Consortium, Apache License 2.0 (http://www.apache.org/licenses/LICENSE-2.0).

MONAI's tests call its metric classes (``DiceMetric(...)(y_pred, y)`` then ``aggregate(reduction)``); the
classes buffer the ``(B, C)`` table of the function of the same name and reduce it with
``monai.metrics.utils.do_metric_reduction``. Here medseg's function (:mod:`medseg.metrics.monai_compat`) computes
the table and MONAI's ``do_metric_reduction`` reduces it, as the class would. Changes of form, none of substance:
CPU only (MONAI loops over CUDA devices when present); a list of channel-first tensors (Dice ``TEST_CASE_10``) is
stacked into a batch, as MONAI's ``Cumulative`` does; the 99³ spheres of the Hausdorff and surface-distance cases
are scored as a batch of one with one foreground channel, where MONAI repeats the same volume into 2 × 3 channels
(identical items: the mean is the same; it would only multiply CI time; batching is tested by the Dice and
surface-Dice cases); ``DiceMetric(return_with_label=...)`` is MONAI's formatting of the ``mean_batch`` values,
applied below to medseg's values.

Every MONAI case passes. The deliberate differences of docs/monai_differences.md ("Metrics") concern input no
MONAI case uses (non-binary masks, ``percentile=0``, ``ignore_index``, ``per_component``); test_monai_compat.py
pins them.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.metrics.utils import do_metric_reduction

from medseg.metrics.monai_compat import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)

from . import monai_metric_cases as cases

pytestmark = pytest.mark.filterwarnings("ignore:the (ground truth|prediction) of class:UserWarning")


@functools.cache
def _volume(spec: cases.Sphere | cases.Empty) -> torch.Tensor:
    return torch.tensor(spec.array())


def _batch(spec: cases.Sphere | cases.Empty) -> torch.Tensor:
    """The volume as a batch of one with a background channel and one foreground channel (both the volume)."""
    return _volume(spec).unsqueeze(0).unsqueeze(0).repeat([1, 2, 1, 1, 1])


# --- test_compute_meandice.py ---------------------------------------------------------------------------------------


def _dice_inputs(case: cases.DiceCase) -> tuple[torch.Tensor, torch.Tensor, dict]:
    inputs = dict(case.inputs)
    y_pred, y = inputs.pop("y_pred"), inputs.pop("y")
    if isinstance(y_pred, list):  # MONAI's Cumulative stacks channel-first tensors into a batch
        y_pred, y = torch.stack(y_pred), torch.stack(y)
    return y_pred, y, inputs


@pytest.mark.parametrize("name", cases.DICE_TEST_VALUE)
def test_compute_meandice_test_value(name):
    y_pred, y, kwargs = _dice_inputs(cases.DICE[name])
    result = compute_dice(y_pred, y, **kwargs)
    np.testing.assert_allclose(result.cpu().numpy(), cases.DICE[name].expected, atol=1e-4)
    np.testing.assert_equal(result.device, y_pred.device)


@pytest.mark.parametrize("name", cases.DICE_TEST_NANS)
def test_compute_meandice_test_nans(name):
    y_pred, y, kwargs = _dice_inputs(cases.DICE[name])
    result = compute_dice(y_pred, y, **kwargs)
    assert np.allclose(np.isnan(result.cpu().numpy()), cases.DICE[name].expected)


@pytest.mark.parametrize("name", cases.DICE_TEST_HELPER)
def test_compute_meandice_test_helper(name):
    """MONAI's ``DiceHelper`` binarises ``y_pred`` (threshold 0.5 or argmax), then reduces with ``mean_batch``."""
    y_pred, y, _ = _dice_inputs(cases.DICE[name])
    # DiceHelper(threshold=True): include_background defaults to True
    result = do_metric_reduction(compute_dice(y_pred > 0.5, y, include_background=True), "mean_batch")
    np.testing.assert_allclose(result[0].cpu().numpy(), [0.0, 0.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(sorted(result[1].cpu().numpy()), [0.0, 1.0, 2.0], atol=1e-4)
    # DiceHelper(apply_argmax=True, get_not_nans=False): background left out, classes from y_pred's channels
    num_classes = y_pred.shape[1]
    indices = torch.argmax(y_pred, dim=1, keepdim=True)
    result = do_metric_reduction(
        compute_dice(indices, y, include_background=False, num_classes=num_classes), "mean_batch"
    )
    np.testing.assert_allclose(result[0].cpu().numpy(), [0.0, 0.0], atol=1e-4)
    # DiceHelper(threshold=True, num_classes=...) on class indices
    result = do_metric_reduction(
        compute_dice(indices, y, include_background=True, num_classes=num_classes), "mean_batch"
    )
    np.testing.assert_allclose(result[0].cpu().numpy(), [0.0, 0.0, 0.0], atol=1e-4)


@pytest.mark.parametrize("name", cases.DICE_TEST_VALUE_CLASS)
def test_compute_meandice_test_value_class(name):
    y_pred, y, params = _dice_inputs(cases.DICE[name])
    result, _ = do_metric_reduction(compute_dice(y_pred, y, **params), "none")
    np.testing.assert_allclose(result.cpu().numpy(), cases.DICE[name].expected, atol=1e-4)


def _with_labels(values: torch.Tensor, params: dict) -> dict[str, float]:
    """``DiceMetric(return_with_label=...)``: the ``mean_batch`` values by label name, rounded to 4 decimals."""
    labels = params["return_with_label"]
    if isinstance(labels, bool):
        first = 0 if params["include_background"] else 1
        labels = [f"label_{i + first}" for i in range(len(values))]
    return {key: round(v.item(), 4) for key, v in zip(labels, values, strict=True)}


@pytest.mark.parametrize("name", cases.DICE_TEST_NANS_CLASS)
def test_compute_meandice_test_nans_class(name):
    case = cases.DICE[name]
    y_pred, y, _ = _dice_inputs(case)
    table = compute_dice(y_pred, y, include_background=case.params["include_background"])
    result, _ = do_metric_reduction(table, case.params["reduction"])
    if case.params.get("return_with_label"):
        assert _with_labels(result, case.params) == case.expected
    else:
        np.testing.assert_allclose(result.cpu().numpy(), case.expected, atol=1e-4)


# --- test_hausdorff_distance.py -------------------------------------------------------------------------------------

_HAUSDORFF_EXPANDED = [
    pytest.param(case, metric, directed, case.expected[i], id=f"{case.id}-{metric}-directed={directed}")
    for case in cases.HAUSDORFF
    for i, (metric, directed) in enumerate(itertools.product(["euclidean", "chessboard", "taxicab"], [True, False]))
]


@pytest.mark.filterwarnings("ignore:spacing is ignored:UserWarning")
@pytest.mark.parametrize(("case", "metric", "directed", "expected"), _HAUSDORFF_EXPANDED)
def test_hausdorff_distance_test_value(case, metric, directed, expected):
    table = compute_hausdorff_distance(
        _batch(case.seg_1),
        _batch(case.seg_2),
        include_background=False,
        distance_metric=metric,
        percentile=case.percentile,
        directed=directed,
        spacing=case.spacing,
    )
    result = do_metric_reduction(table, "mean")[0]
    np.testing.assert_allclose(expected, result.cpu(), rtol=1e-6)


@pytest.mark.parametrize("spacing", cases.HAUSDORFF_NANS)
def test_hausdorff_distance_test_nans(spacing):
    empty = torch.zeros((1, 1, 99, 99, 99))
    result, not_nans = do_metric_reduction(
        compute_hausdorff_distance(empty, empty, include_background=False, spacing=spacing), "mean"
    )
    np.testing.assert_allclose(0, result, rtol=1e-7)
    np.testing.assert_allclose(0, not_nans, rtol=1e-7)


# --- test_surface_distance.py ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases.SURFACE_DISTANCE, ids=lambda case: case.id)
def test_surface_distance_test_value(case):
    for symmetric, expected in zip([True, False], case.expected, strict=True):
        table = compute_average_surface_distance(
            _batch(case.seg_1),
            _batch(case.seg_2),
            include_background=False,
            symmetric=symmetric,
            distance_metric=case.distance_metric,
            spacing=case.spacing,
        )
        result = do_metric_reduction(table, "mean")[0]
        np.testing.assert_allclose(expected, result.cpu(), rtol=1e-5)


@pytest.mark.parametrize("spacing", cases.SURFACE_DISTANCE_NANS)
def test_surface_distance_test_nans(spacing):
    empty = torch.zeros((1, 1, 99, 99, 99))
    result, not_nans = do_metric_reduction(
        compute_average_surface_distance(empty, empty, include_background=False, spacing=spacing), "mean"
    )
    np.testing.assert_allclose(0, result, rtol=1e-5)
    np.testing.assert_allclose(0, not_nans, rtol=1e-5)


# --- test_surface_dice.py (TestAllSurfaceDiceMetrics) ---------------------------------------------------------------


def _one_hot(labels: torch.Tensor, n_class: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes=n_class).movedim(-1, 1)


def _shifted_halves(shape: tuple[int, ...], start_pred: int, start_gt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch of two: item 0 has label 1 from ``start`` along the last axis; item 1 is background only."""
    predictions = torch.zeros((2, *shape), dtype=torch.int64)
    labels = torch.zeros((2, *shape), dtype=torch.int64)
    predictions[0, ..., start_pred:] = 1
    labels[0, ..., start_gt:] = 1
    return _one_hot(predictions, 2), _one_hot(labels, 2)


def _nsd(y_pred: torch.Tensor, y: torch.Tensor, thresholds: list[float], **kwargs) -> torch.Tensor:
    return compute_surface_dice(y_pred, y, thresholds, include_background=True, **kwargs)


def _check_shifted_2d(res0, agg0, not_nans):
    expected_res0 = np.zeros((2, 2))
    expected_res0[0, 1] = 1 - (478 + 480 + 9 * 2) / (480 * 4 + 588 * 2 + 578 * 2)
    expected_res0[0, 0] = 1 - (478 + 480 + 9 * 2) / (480 * 4 + 48 * 2 + 58 * 2)
    expected_res0[1, 0] = 1
    expected_res0[1, 1] = np.nan
    for b, c in np.ndindex(2, 2):
        np.testing.assert_allclose(expected_res0[b, c], res0[b, c].cpu())
    np.testing.assert_allclose(agg0.cpu(), np.nanmean(np.nanmean(expected_res0, axis=1), axis=0))
    np.testing.assert_equal(not_nans.cpu(), torch.tensor(2))


def test_surface_dice_test_tolerance_euclidean_distance_with_spacing():
    predictions_hot, labels_hot = _shifted_halves((480, 640), 50, 60)  # 10 px shift
    test_spacing = (0.85, 1.2)
    res0 = _nsd(predictions_hot, labels_hot, [0, 0], spacing=test_spacing)
    agg0 = do_metric_reduction(res0.clone(), "mean")[0]  # nanmean across image then nanmean across batch
    res0_nans = _nsd(predictions_hot, labels_hot, [0, 0])
    agg0_nans, not_nans = do_metric_reduction(res0_nans.clone(), "mean")
    np.testing.assert_array_equal(res0.cpu(), res0_nans.cpu())
    np.testing.assert_equal(res0.device, predictions_hot.device)
    np.testing.assert_array_equal(agg0.cpu(), agg0_nans.cpu())
    res = {t: _nsd(predictions_hot, labels_hot, [t, t], spacing=test_spacing) for t in (1, 9, 10, 11, 12, 13)}
    for r in [res0, *res.values()]:
        assert r.shape == torch.Size([2, 2])
    for c in (0, 1):
        assert res0[0, c] < res[1][0, c] < res[9][0, c] < res[10][0, c] < res[11][0, c]
    # spacing (0.85, 1.2) and a 10-column shift: from tolerance 12 on, the surface Dice is 1
    np.testing.assert_array_equal(res[12].cpu(), res[13].cpu())
    _check_shifted_2d(res0, agg0, not_nans)


def test_surface_dice_test_tolerance_euclidean_distance():
    predictions_hot, labels_hot = _shifted_halves((480, 640), 50, 60)
    res0 = _nsd(predictions_hot, labels_hot, [0, 0])
    agg0, not_nans = do_metric_reduction(res0.clone(), "mean")
    np.testing.assert_equal(res0.device, predictions_hot.device)
    res = {t: _nsd(predictions_hot, labels_hot, [t, t]) for t in (1, 9, 10, 11)}
    for r in [res0, *res.values()]:
        assert r.shape == torch.Size([2, 2])
    for c in (0, 1):
        assert res0[0, c] < res[1][0, c] < res[9][0, c] < res[10][0, c]
    np.testing.assert_array_equal(res[10].cpu(), res[11].cpu())
    _check_shifted_2d(res0, agg0, not_nans)


def test_surface_dice_test_tolerance_euclidean_distance_3d():
    predictions_hot, labels_hot = _shifted_halves((200, 110, 80), 20, 30)  # offset by 10
    res0 = _nsd(predictions_hot, labels_hot, [0, 0])
    agg0, not_nans = do_metric_reduction(res0.clone(), "mean")
    res = {t: _nsd(predictions_hot, labels_hot, [t, t]) for t in (1, 10, 11)}
    for r in [res0, *res.values()]:
        assert r.shape == torch.Size([2, 2])
    for c in (0, 1):
        assert res0[0, c] < res[1][0, c] < res[10][0, c]
    np.testing.assert_array_equal(res[10].cpu(), res[11].cpu())
    expected_res0 = np.zeros((2, 2))
    expected_res0[0, 1] = 1 - (200 * 110 + 198 * 108 + 9 * 200 * 2 + 9 * 108 * 2) / (
        200 * 110 * 4 + (58 + 48) * 200 * 2 + (58 + 48) * 108 * 2
    )
    expected_res0[0, 0] = 1 - (200 * 110 + 198 * 108 + 9 * 200 * 2 + 9 * 108 * 2) / (
        200 * 110 * 4 + (28 + 18) * 200 * 2 + (28 + 18) * 108 * 2
    )
    expected_res0[1, 0] = 1
    expected_res0[1, 1] = np.nan
    for b, c in np.ndindex(2, 2):
        np.testing.assert_allclose(expected_res0[b, c], res0[b, c].cpu())
    np.testing.assert_allclose(agg0.cpu(), np.nanmean(np.nanmean(expected_res0, axis=1), axis=0))
    np.testing.assert_equal(not_nans.cpu(), torch.tensor(2))


def test_surface_dice_test_tolerance_all_distances():
    predictions = torch.zeros((1, 10, 10), dtype=torch.int64)
    labels = torch.zeros((1, 10, 10), dtype=torch.int64)
    predictions[0, 1:4, 1] = 1
    labels[0, 5:8, 6] = 1
    predictions_hot, labels_hot = _one_hot(predictions, 2), _one_hot(labels, 2)
    # MONAI's hand-worked distances. Euclidean: background: 36 boundary pixels at 0; gt→pred
    # [3, sqrt(13), 2, 3, 2, 2, 2, 1], pred→gt [1, 2, 2, 1]; class 1: [sqrt(29), sqrt(34), sqrt(41)] both ways
    expectations = {
        "euclidean": [
            ([0, 0], [[1 - (8 + 4) / (36 * 2 + 8 + 4), 0]]),
            ([2.8, 5.5], [[1 - 3 / (36 * 2 + 8 + 4), 1 - (2 + 2) / (3 + 3)]]),
            ([3, 6], [[1 - 1 / (36 * 2 + 8 + 4), 1 - 2 / (3 + 3)]]),
        ],
        # chessboard: background gt→pred [3, 3, 2, 3, 2, 2, 2, 1], pred→gt [1, 2, 2, 1]; class 1: [5, 5, 5] both ways
        "chessboard": [
            ([0, 0], [[1 - (8 + 4) / (36 * 2 + 8 + 4), 0]]),
            ([1, 4.999], [[1 - (7 + 2) / (36 * 2 + 8 + 4), 0]]),
            ([2, 5], [[1 - 3 / (36 * 2 + 8 + 4), 1]]),
        ],
        # taxicab: background gt→pred [3, 4, 2, 3, 2, 2, 2, 1], pred→gt [1, 2, 2, 1]; class 1: [7, 8, 9] both ways
        "taxicab": [
            ([0, 0], [[1 - (8 + 4) / (36 * 2 + 8 + 4), 0]]),
            ([1, 7], [[1 - (7 + 2) / (36 * 2 + 8 + 4), 1 - (2 + 2) / (3 + 3)]]),
            ([3, 9], [[1 - 1 / (36 * 2 + 8 + 4), 1]]),
        ],
    }
    for metric, checks in expectations.items():
        for thresholds, expected in checks:
            res = _nsd(predictions_hot, labels_hot, thresholds, distance_metric=metric)
            np.testing.assert_array_almost_equal(res, expected)


def test_surface_dice_test_asserts():
    predictions = torch.zeros((1, 80, 80), dtype=torch.int64)
    labels = torch.zeros((1, 80, 80), dtype=torch.int64)
    predictions[0, 10:20, 10:20] = 1
    labels[0, 20:30, 20:30] = 1
    predictions_hot, labels_hot = _one_hot(predictions, 2), _one_hot(labels, 2)

    def raises(message, y_pred, y, thresholds=(1, 1)):
        with pytest.raises(ValueError) as context:
            _nsd(y_pred, y, list(thresholds))
        assert str(context.value) == message

    # no torch tensor (MONAI's class says so in its own words before the function; this is the function's)
    raises("y_pred and y must be PyTorch Tensor.", predictions_hot.numpy(), labels_hot)
    raises("y_pred and y must be PyTorch Tensor.", predictions_hot, labels_hot.numpy())
    # wrong dimensions
    raises("y_pred and y should be one-hot encoded: [B,C,H,W] or [B,C,H,W,D].", predictions, labels_hot)
    raises("y_pred and y should be one-hot encoded: [B,C,H,W] or [B,C,H,W,D].", predictions_hot, labels)
    # mismatch of shape of input tensors
    raises(
        "y_pred and y should have same shape, but instead, shapes are torch.Size([1, 2, 80, 80]) (y_pred) and "
        "torch.Size([1, 2, 80, 50]) (y).",
        predictions_hot,
        torch.clone(predictions_hot)[:, :, :, :50],
    )
    # wrong number of class thresholds
    raises(
        "number of classes (2) does not match number of class thresholds (3).", predictions_hot, labels_hot, (1, 1, 1)
    )
    # inf and nan values in class thresholds
    raises("All class thresholds need to be finite.", predictions_hot, labels_hot, (np.inf, 1))
    raises("All class thresholds need to be finite.", predictions_hot, labels_hot, (np.nan, 1))
    # negative values in class thresholds
    raises("All class thresholds need to be >= 0.", predictions_hot, labels_hot, (-0.22, 1))


def test_surface_dice_test_not_predicted_not_present():
    # a class present in the labels but not predicted: 0; a class in neither: NaN
    predictions = torch.zeros((1, 80, 80), dtype=torch.int64)
    labels = torch.zeros((1, 80, 80), dtype=torch.int64)
    predictions[0, 10:20, 10:20] = 1
    labels[0, 10:20, 10:20] = 2
    predictions_hot, labels_hot = _one_hot(predictions, 4), _one_hot(labels, 4)
    res_bgr_classes = compute_surface_dice(predictions_hot, labels_hot, [1, 1, 1, 1], include_background=True)
    np.testing.assert_array_equal(res_bgr_classes, [[1, 0, 0, np.nan]])
    res_classes = compute_surface_dice(predictions_hot, labels_hot, [1, 1, 1], include_background=False)
    np.testing.assert_array_equal(res_classes, [[0, 0, np.nan]])
    # aggregation
    np.testing.assert_equal(do_metric_reduction(res_bgr_classes, "mean")[0], torch.tensor([1 / 3], dtype=torch.float))
    np.testing.assert_equal(do_metric_reduction(res_classes, "mean")[0], torch.tensor([0], dtype=torch.float))
    predictions_empty = torch.zeros((2, 3, 1, 1))
    res_classes = compute_surface_dice(predictions_empty, predictions_empty, [1, 1, 1], include_background=True)
    res, not_nans = do_metric_reduction(res_classes.clone(), "mean")
    np.testing.assert_array_equal(res_classes, [[np.nan, np.nan, np.nan], [np.nan, np.nan, np.nan]])
    np.testing.assert_equal(res, torch.tensor([0], dtype=torch.float))
    np.testing.assert_equal(not_nans, torch.tensor([0], dtype=torch.float))


def test_surface_dice_test_compute_surface_dice_subvoxel():
    def nsd(mask_pred, mask_gt, spacing):
        return compute_surface_dice(
            mask_pred, mask_gt, [1.0], include_background=True, spacing=spacing, use_subvoxels=True
        )

    mask_gt, mask_pred = torch.zeros(1, 1, 128, 128, 128), torch.zeros(1, 1, 128, 128, 128)
    mask_gt[0, 0, 50, 60, 70] = 1
    np.testing.assert_allclose(nsd(mask_pred, mask_gt, (3, 2, 1)), 0.0)
    mask_gt[0, 0, 50, 60, 70] = 0
    mask_pred[0, 0, 50, 60, 72] = 1
    np.testing.assert_allclose(nsd(mask_pred, mask_gt, (3, 2, 1)), 0.0)
    mask_gt[0, 0, 50, 60, 70] = 1
    mask_pred[0, 0, 50, 60, 72] = 1
    np.testing.assert_allclose(nsd(mask_pred, mask_gt, (3, 2, 1)), 0.5)
    mask_gt, mask_pred = torch.zeros(1, 1, 100, 100, 100), torch.zeros(1, 1, 100, 100, 100)
    mask_gt[0, 0, 0:50, :, :] = 1
    mask_pred[0, 0, 0:51, :, :] = 1
    np.testing.assert_allclose(nsd(mask_pred, mask_gt, (2, 1, 1)), 0.836145, atol=1e-3, rtol=1e-3)
