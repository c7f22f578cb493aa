"""medseg.metrics.monai_compat against MONAI 1.6's functions of the same name: signatures, values, NaN/inf, warnings.

MONAI's own test cases run in test_monai_metric_cases.py; here MONAI's functions are the independent computation
on random one-hot batches with absent classes (every empty-mask combination), and the deliberate differences of
docs/monai_differences.md ("Metrics") are pinned.
"""

import inspect
import re
import warnings
from pathlib import Path

import monai.metrics
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.metrics import monai_compat
from medseg.metrics.monai_compat import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)

from ._masks import label_volume

pytestmark = pytest.mark.filterwarnings("ignore:the (ground truth|prediction) of class:UserWarning")

SPACING = (1.5, 1.0, 0.7)


def one_hot_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two items of 4 classes on 14×12×10: every empty combination (reference only, prediction only, both)."""
    pred = np.stack([label_volume((14, 12, 10), 3, seed=s) for s in (1, 2)])
    ref = np.stack([label_volume((14, 12, 10), 3, seed=s) for s in (3, 4)])
    y_pred = F.one_hot(torch.from_numpy(pred).long(), 4).movedim(-1, 1).float()
    y = F.one_hot(torch.from_numpy(ref).long(), 4).movedim(-1, 1).float()
    y[0, 2] = 0  # class 2 of item 0: predicted, not in the reference
    y_pred[1, 3] = 0  # class 3 of item 1: in the reference, not predicted
    y[1, 1] = 0
    y_pred[1, 1] = 0  # class 1 of item 1: in neither
    return y_pred, y


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """NaN and inf where MONAI has them (bit for bit), finite values to float32 precision, same dtype and device."""
    assert ours.dtype == theirs.dtype and ours.device == theirs.device and ours.shape == theirs.shape
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert torch.equal(ours.isinf(), theirs.isinf())
    assert torch.equal(ours[ours.isinf()], theirs[theirs.isinf()])
    finite = ours.isfinite()
    torch.testing.assert_close(ours[finite], theirs[finite], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", monai_compat.__all__)
def test_signatures_are_monais(name):
    ours = inspect.signature(getattr(monai_compat, name)).parameters
    theirs = inspect.signature(getattr(monai.metrics, name)).parameters
    assert [(p.name, p.default, p.kind) for p in ours.values()] == [
        (p.name, p.default, p.kind) for p in theirs.values()
    ]


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_dice_and_iou_equal_monai(include_background, ignore_empty):
    y_pred, y = one_hot_batch()
    kwargs = {"include_background": include_background, "ignore_empty": ignore_empty}
    assert_same(compute_dice(y_pred, y, **kwargs), monai.metrics.compute_dice(y_pred, y, **kwargs))
    assert_same(compute_iou(y_pred, y, **kwargs), monai.metrics.compute_iou(y_pred, y, **kwargs))
    indices = y_pred.argmax(1, keepdim=True)  # class indices with num_classes, as MONAI reads them
    assert_same(
        compute_dice(indices, y, num_classes=4, **kwargs),
        monai.metrics.compute_dice(indices, y, num_classes=4, **kwargs),
    )


@pytest.mark.filterwarnings("ignore:spacing is ignored:UserWarning")
@pytest.mark.parametrize("distance_metric", ["euclidean", "chessboard", "taxicab"])
def test_surface_metrics_equal_monai(distance_metric):
    y_pred, y = one_hot_batch()
    common = {"distance_metric": distance_metric, "spacing": SPACING}
    for kwargs in ({}, {"percentile": 95}, {"directed": True}, {"percentile": 50, "directed": True}):
        assert_same(
            compute_hausdorff_distance(y_pred, y, **common, **kwargs),
            monai.metrics.compute_hausdorff_distance(y_pred, y, **common, **kwargs),
        )
    for symmetric in (True, False):
        assert_same(
            compute_average_surface_distance(y_pred, y, symmetric=symmetric, **common),
            monai.metrics.compute_average_surface_distance(y_pred, y, symmetric=symmetric, **common),
        )
    for use_subvoxels in (False, True):
        kwargs = {**common, "use_subvoxels": use_subvoxels, "include_background": True}
        assert_same(
            compute_surface_dice(y_pred, y, [1.0, 1.5, 2.0, 0.5], **kwargs),
            monai.metrics.compute_surface_dice(y_pred, y, [1.0, 1.5, 2.0, 0.5], **kwargs),
        )


def test_empty_mask_results_are_monais():
    """One 2D item per empty combination: (prediction, reference) = both, reference empty, prediction empty."""
    y_pred = torch.zeros((3, 1, 6, 6))
    y = torch.zeros((3, 1, 6, 6))
    y_pred[1, 0, 1:3, 1:3] = 1
    y[2, 0, 2:4, 2:4] = 1
    nan, inf = float("nan"), float("inf")
    expected = {  # MONAI 1.6.1 on these arrays; HD95 of infinite distances is torch.quantile's NaN
        "dice": [nan, nan, 0.0],
        "hd": [nan, inf, inf],
        "hd95": [nan, nan, nan],
        "asd": [nan, inf, inf],
        "nsd": [nan, 0.0, 0.0],
    }
    ours = {
        "dice": compute_dice(y_pred, y),
        "hd": compute_hausdorff_distance(y_pred, y),
        "hd95": compute_hausdorff_distance(y_pred, y, percentile=95),
        "asd": compute_average_surface_distance(y_pred, y, symmetric=True),
        "nsd": compute_surface_dice(y_pred, y, [1.0]),
    }
    theirs = {
        "dice": monai.metrics.compute_dice(y_pred, y),
        "hd": monai.metrics.compute_hausdorff_distance(y_pred, y),
        "hd95": monai.metrics.compute_hausdorff_distance(y_pred, y, percentile=95),
        "asd": monai.metrics.compute_average_surface_distance(y_pred, y, symmetric=True),
        "nsd": monai.metrics.compute_surface_dice(y_pred, y, [1.0]),
    }
    for name, values in expected.items():
        np.testing.assert_array_equal(ours[name][:, 0].numpy(), values, err_msg=name)
        assert_same(ours[name], theirs[name])


def test_empty_mask_warnings_are_monais():
    y_pred, y = one_hot_batch()

    def messages(module):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module.compute_hausdorff_distance(y_pred, y)
            module.compute_average_surface_distance(y_pred, y)
            module.compute_surface_dice(y_pred, y, [1.0, 1.0, 1.0])
        return [str(w.message) for w in caught if "is all 0" in str(w.message)]

    assert messages(monai_compat) == messages(monai.metrics)
    assert messages(monai_compat)  # the batch has empty classes


def test_percentile_zero_is_the_minimum_not_the_maximum():
    """docs/monai_differences.md, "HD `percentile=0`": MONAI's ``if not percentile`` reads 0 as no percentile."""
    y_pred = torch.zeros((1, 1, 8, 14))
    y_pred[0, 0, 2:4, 2:4] = 1
    y = y_pred.clone()
    y_pred[0, 0, 2, 10] = 1  # one far pixel, 7 from the square
    assert compute_hausdorff_distance(y_pred, y, include_background=True, percentile=0).item() == 0.0
    assert monai.metrics.compute_hausdorff_distance(y_pred, y, include_background=True, percentile=0).item() == 7.0
    assert compute_hausdorff_distance(y_pred, y, include_background=True).item() == 7.0


@pytest.mark.parametrize(
    ("function", "args"),
    [
        (compute_dice, ()),
        (compute_iou, ()),
        (compute_hausdorff_distance, ()),
        (compute_average_surface_distance, ()),
        (compute_surface_dice, ([1.0],)),
    ],
)
def test_non_binary_input_is_refused(function, args):
    """docs/monai_differences.md, "Non-binary metric input": MONAI reads 0.4 as inside for Dice, outside for HD."""
    y = torch.zeros((1, 2, 6, 6))
    y[0, 1, 1:4, 1:4] = 1
    y[0, 0] = 1 - y[0, 1]
    probabilities = y * 0.6 + 0.2
    with pytest.raises(ValueError, match="must hold 0 and 1"):
        function(probabilities, y, *args)


def test_class_indices_outside_the_classes_are_refused():
    indices = torch.tensor([[[[0, 1], [2, 5]]]])
    with pytest.raises(ValueError, match="class index 5"):
        compute_dice(indices, indices, num_classes=3)


@pytest.mark.parametrize(
    ("function", "kwargs", "message"),
    [
        (compute_dice, {"ignore_index": 0}, "ignore_index"),
        (compute_iou, {"ignore_index": 0}, "ignore_index"),
        (compute_hausdorff_distance, {"ignore_index": 0}, "ignore_index"),
        (compute_average_surface_distance, {"ignore_index": 0}, "ignore_index"),
    ],
)
def test_arguments_medseg_does_not_take_over_are_refused(function, kwargs, message):
    """docs/monai_differences.md, "`ignore_index` in metrics"."""
    y = torch.zeros((1, 2, 4, 4))
    y[:, 0] = 1
    with pytest.raises(ValueError, match=message):
        function(y, y, **kwargs)


@pytest.mark.filterwarnings("ignore:Voronoi computation is running on CPU:UserWarning")
def test_per_component_dice_is_monais():
    y = torch.zeros((1, 2, 8, 8))
    y[0, 1, 1:3, 1:3] = 1
    y[0, 1, 5:7, 5:7] = 1
    y[0, 0] = 1 - y[0, 1]
    y_pred = y.clone()
    y_pred[0, 1, 5:7, 5:7] = 0  # one of the two components missed
    y_pred[0, 0] = 1 - y_pred[0, 1]
    expected = monai.metrics.compute_dice(y_pred, y, per_component=True)
    torch.testing.assert_close(compute_dice(y_pred, y, per_component=True), expected)
    assert compute_dice(y_pred, y).tolist() != expected.tolist()


def test_chessboard_and_taxicab_ignore_the_spacing_with_a_warning():
    y_pred, y = one_hot_batch()
    with pytest.warns(UserWarning, match="spacing is ignored by chessboard"):
        with_spacing = compute_hausdorff_distance(y_pred, y, distance_metric="chessboard", spacing=SPACING)
    assert_same(with_spacing, compute_hausdorff_distance(y_pred, y, distance_metric="chessboard"))
    with pytest.raises(ValueError, match="not implemented"):
        compute_hausdorff_distance(y_pred, y, distance_metric="cosine")


def test_numpy_input_and_the_device_of_the_result():
    y_pred, y = one_hot_batch()
    from_numpy = compute_hausdorff_distance(y_pred.numpy(), y.numpy(), spacing=SPACING)
    assert from_numpy.device == torch.device("cpu")
    assert_same(from_numpy, compute_hausdorff_distance(y_pred, y, spacing=SPACING))


#: Each row of docs/monai_differences.md, "Metrics", and the test that pins it.
DIFFERENCE_ROWS = {
    "Non-binary metric input": test_non_binary_input_is_refused,
    "HD `percentile=0`": test_percentile_zero_is_the_minimum_not_the_maximum,
    "`ignore_index` in metrics": test_arguments_medseg_does_not_take_over_are_refused,
}


def test_every_metrics_row_of_the_differences_table_is_pinned_by_a_test():
    text = (Path(__file__).resolve().parents[2] / "docs" / "monai_differences.md").read_text()
    metrics_section = text[text.index("\n## Metrics\n") :]
    rows = re.findall(r"^\| \*\*(.+?)\*\* \|", metrics_section, flags=re.MULTILINE)
    assert rows == list(DIFFERENCE_ROWS)
    for row, test in DIFFERENCE_ROWS.items():
        assert f'"{row}"' in test.__doc__
