"""MONAI's own unit-test cases for the Dice, Hausdorff and surface-distance metrics, as data.

Source: Project MONAI (https://github.com/Project-MONAI/MONAI), ``tests/metrics/test_compute_meandice.py``,
``test_hausdorff_distance.py`` and ``test_surface_distance.py`` as of commit 8aef9a9 (March 2025, in the 1.5
release; the newest MONAI snapshot available to us, and the installed MONAI 1.6.1 meets every expected value),
Copyright (c) MONAI Consortium, licensed under the Apache License, Version 2.0
(http://www.apache.org/licenses/LICENSE-2.0). The inputs, arguments, expected numbers and tolerances are MONAI's
(they are the spec); each case keeps MONAI's file and name in its id. Only the form is ours: MONAI's
``parameterized`` lists became records, and the spheres of ``create_spherical_seg_3d`` are stored as its
arguments (:class:`Sphere`) and drawn when a test runs. ``test_surface_dice.py`` is procedural; its tests are
restated in tests/metrics/test_monai_metric_cases.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Sphere:
    """MONAI's ``create_spherical_seg_3d(radius, centre, im_shape, im_spacing)``: 1 inside the sphere, 0 outside."""

    radius: float = 20.0
    centre: tuple[int, int, int] = (49, 49, 49)
    im_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    im_shape: tuple[int, int, int] = (99, 99, 99)

    def array(self) -> np.ndarray:
        """The image, computed as MONAI's helper computes it."""
        image = np.zeros(self.im_shape, dtype=np.int32)
        spy, spx, spz = np.ogrid[: self.im_shape[0], : self.im_shape[1], : self.im_shape[2]]
        spy = spy.astype(float) * self.im_spacing[0]
        spx = spx.astype(float) * self.im_spacing[1]
        spz = spz.astype(float) * self.im_spacing[2]
        spy -= self.centre[0]
        spx -= self.centre[1]
        spz -= self.centre[2]
        circle = (spx * spx + spy * spy + spz * spz) <= self.radius * self.radius
        image[circle] = 1
        image[~circle] = 0
        return image


@dataclass(frozen=True)
class Empty:
    """MONAI's ``np.zeros([99, 99, 99])``."""

    def array(self) -> np.ndarray:
        return np.zeros([99, 99, 99])


@dataclass(frozen=True)
class DiceCase:
    """``compute_dice(**inputs)`` (or ``DiceMetric(**params)`` then ``aggregate()``) must give ``expected``."""

    id: str
    inputs: dict
    expected: object
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DistanceCase:
    """A pair of volumes (MONAI's ``seg_1`` = y_pred, ``seg_2`` = y) with MONAI's arguments and expected values."""

    id: str
    seg_1: Sphere | Empty
    seg_2: Sphere | Empty
    spacing: tuple[float, ...] | None
    expected: list[float]
    percentile: float | None = None
    distance_metric: str = "euclidean"


def T(values: list) -> torch.Tensor:
    """A float32 tensor from MONAI's nested list."""
    return torch.tensor(values)


# --- test_compute_meandice.py --------------------------------------------------------------------------------------

_CASE_2 = {
    "y_pred": T(
        [
            [[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]],
            [[[0.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]],
        ]
    ),
    "y": T(
        [
            [[[0.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]],
            [[[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]],
        ]
    ),
}
_PRED_4 = T(
    [
        [[[1.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]],
        [[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]],
    ]
)
_Y_4 = T(
    [
        [[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
        [[[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]],
    ]
)
_Y_6 = T(
    [
        [[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
        [[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
    ]
)

DICE = {
    "TEST_CASE_1": DiceCase(
        "TEST_CASE_1",
        {
            "y_pred": T([[[[1.0, 0.0], [0.0, 1.0]]]]),
            "y": T([[[[1.0, 0.0], [1.0, 1.0]]]]),
            "include_background": True,
        },
        [[0.8]],
    ),
    "TEST_CASE_2": DiceCase(
        "TEST_CASE_2", {**_CASE_2, "include_background": False}, [[0.5000, 0.0000], [0.6667, 0.6667]]
    ),
    # should return Nan for all labels=0 case and skip for MeanDice
    "TEST_CASE_3": DiceCase(
        "TEST_CASE_3",
        {
            "y_pred": T(
                [
                    [[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]],
                    [[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]],
                ]
            ),
            "y": T(
                [
                    [[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
                    [[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]],
                ]
            ),
            "include_background": True,
        },
        [[False, True, True], [False, False, True]],
    ),
    "TEST_CASE_4": DiceCase(
        "TEST_CASE_4",
        {"y_pred": _PRED_4, "y": _Y_4},
        [0.6786, 0.4000, 0.6667],
        {"include_background": True, "reduction": "mean_batch", "get_not_nans": True},
    ),
    "TEST_CASE_5": DiceCase(
        "TEST_CASE_5",
        {"y_pred": _PRED_4, "y": _Y_4},
        0.689683,
        {"include_background": True, "reduction": "mean", "get_not_nans": True},
    ),
    "TEST_CASE_6": DiceCase(
        "TEST_CASE_6",
        {"y_pred": _PRED_4, "y": _Y_6},
        [1.7143, 0.0000, 0.0000],
        {"include_background": True, "reduction": "sum_batch", "get_not_nans": True},
    ),
    "TEST_CASE_7": DiceCase(
        "TEST_CASE_7",
        {"y_pred": _PRED_4, "y": _Y_6},
        0.857143,
        {"include_background": True, "reduction": "mean", "get_not_nans": True},
    ),
    "TEST_CASE_8": DiceCase(
        "TEST_CASE_8",
        {"y_pred": _PRED_4, "y": _Y_6},
        [0.0000, 0.0000],
        {"include_background": False, "reduction": "sum_batch", "get_not_nans": True},
    ),
    "TEST_CASE_9": DiceCase(
        "TEST_CASE_9",
        {"y": torch.ones((2, 2, 3, 3)), "y_pred": torch.ones((2, 2, 3, 3))},
        [[1.0000, 1.0000], [1.0000, 1.0000]],
    ),
    # a list of channel-first tensors: MONAI's metric classes stack them into a batch
    "TEST_CASE_10": DiceCase(
        "TEST_CASE_10",
        {
            "y": [torch.ones((2, 3, 3)), torch.ones((2, 3, 3))],
            "y_pred": [torch.ones((2, 3, 3)), torch.ones((2, 3, 3))],
        },
        [[1.0000, 1.0000], [1.0000, 1.0000]],
    ),
    "TEST_CASE_11": DiceCase(
        "TEST_CASE_11",
        {"y": torch.zeros((2, 2, 3, 3)), "y_pred": torch.zeros((2, 2, 3, 3)), "ignore_empty": False},
        [[1.0000, 1.0000], [1.0000, 1.0000]],
    ),
    "TEST_CASE_12": DiceCase(
        "TEST_CASE_12",
        {"y": torch.zeros((2, 2, 3, 3)), "y_pred": torch.ones((2, 2, 3, 3)), "ignore_empty": False},
        [[0.0000, 0.0000], [0.0000, 0.0000]],
    ),
    # test return_with_label
    "TEST_CASE_13": DiceCase(
        "TEST_CASE_13",
        {"y_pred": _PRED_4, "y": _Y_4},
        {"bg": 0.6786, "fg0": 0.4000, "fg1": 0.6667},
        {
            "include_background": True,
            "reduction": "mean_batch",
            "get_not_nans": True,
            "return_with_label": ["bg", "fg0", "fg1"],
        },
    ),
    # test return_with_label, include_background
    "TEST_CASE_14": DiceCase(
        "TEST_CASE_14",
        {"y_pred": _PRED_4, "y": _Y_4},
        {"label_0": 0.6786, "label_1": 0.4000, "label_2": 0.6667},
        {"include_background": True, "reduction": "mean_batch", "get_not_nans": True, "return_with_label": True},
    ),
    # test return_with_label, not include_background
    "TEST_CASE_15": DiceCase(
        "TEST_CASE_15",
        {"y_pred": _PRED_4, "y": _Y_4},
        {"label_1": 0.4000, "label_2": 0.6667},
        {"include_background": False, "reduction": "mean_batch", "get_not_nans": True, "return_with_label": True},
    ),
}

#: MONAI's test methods and the cases each runs (``TestComputeMeanDice``).
DICE_TEST_VALUE = ["TEST_CASE_1", "TEST_CASE_2", "TEST_CASE_9", "TEST_CASE_11", "TEST_CASE_12"]
DICE_TEST_NANS = ["TEST_CASE_3"]
DICE_TEST_HELPER = ["TEST_CASE_3"]
DICE_TEST_VALUE_CLASS = ["TEST_CASE_1", "TEST_CASE_2", "TEST_CASE_10"]
DICE_TEST_NANS_CLASS = [
    "TEST_CASE_4",
    "TEST_CASE_5",
    "TEST_CASE_6",
    "TEST_CASE_7",
    "TEST_CASE_8",
    "TEST_CASE_13",
    "TEST_CASE_14",
    "TEST_CASE_15",
]

# --- test_hausdorff_distance.py ------------------------------------------------------------------------------------

_TEST_SPACING = (0.85, 1.2, 0.9)

#: Expected values in the order of ``product(["euclidean", "chessboard", "taxicab"], [True, False])`` (directed).
HAUSDORFF = [
    DistanceCase("TEST_CASES[0]", Sphere(), Sphere(), None, [0, 0, 0, 0, 0, 0], percentile=1),
    DistanceCase(
        "TEST_CASES[1]",
        Sphere(radius=20, centre=(20, 20, 20)),
        Sphere(radius=20, centre=(19, 19, 19)),
        None,
        [1.7320508075688772, 1.7320508075688772, 1, 1, 3, 3],
    ),
    DistanceCase(
        "TEST_CASES[2]",
        Sphere(radius=33, centre=(19, 33, 22)),
        Sphere(radius=33, centre=(20, 33, 22)),
        None,
        [1, 1, 1, 1, 1, 1],
    ),
    DistanceCase(
        "TEST_CASES[3]",
        Sphere(radius=20, centre=(20, 33, 22)),
        Sphere(radius=40, centre=(20, 33, 22)),
        None,
        [20.09975124224178, 20.223748416156685, 15, 20, 24, 35],
    ),
    # pred does not have foreground (but gt has), the metric should be inf
    DistanceCase(
        "TEST_CASES[4]",
        Empty(),
        Sphere(radius=40, centre=(20, 33, 22)),
        None,
        [np.inf, np.inf, np.inf, np.inf, np.inf, np.inf],
    ),
    # gt does not have foreground (but pred has), the metric should be inf
    DistanceCase("TEST_CASES[5]", Sphere(), Empty(), None, [np.inf, np.inf, np.inf, np.inf, np.inf, np.inf]),
    DistanceCase(
        "TEST_CASES[6]",
        Sphere(radius=20, centre=(20, 33, 22)),
        Sphere(radius=40, centre=(20, 33, 22)),
        None,
        [19.924858845171276, 20.09975124224178, 14, 18, 22, 33],
        percentile=95,
    ),
    DistanceCase(
        "TEST_CASES[7]",
        Sphere(radius=20, centre=(20, 20, 20), im_spacing=_TEST_SPACING),
        Sphere(radius=20, centre=(19, 19, 19), im_spacing=_TEST_SPACING),
        _TEST_SPACING,
        [2.0808651447296143, 2.2671568, 2, 2, 3, 4],
    ),
    DistanceCase(
        "TEST_CASES[8]",
        Sphere(radius=15, centre=(20, 33, 22), im_spacing=_TEST_SPACING),
        Sphere(radius=30, centre=(20, 33, 22), im_spacing=_TEST_SPACING),
        _TEST_SPACING,
        [15.439640998840332, 15.62594, 11, 17, 20, 28],
    ),
]

#: Both masks empty: the metric and its not-NaN count reduce to 0 (``TEST_CASES_NANS``, spacing None and given).
HAUSDORFF_NANS = [None, _TEST_SPACING]

# --- test_surface_distance.py --------------------------------------------------------------------------------------

#: Expected values for ``symmetric=True`` then ``symmetric=False``.
SURFACE_DISTANCE = [
    DistanceCase("TEST_CASES[0]", Sphere(), Sphere(), None, [0, 0]),
    DistanceCase(
        "TEST_CASES[1]",
        Sphere(radius=20, centre=(20, 20, 20)),
        Sphere(radius=20, centre=(19, 19, 19)),
        None,
        [1.0380029806259314, 1.0380029806259314],
        distance_metric="taxicab",
    ),
    DistanceCase(
        "TEST_CASES[2]",
        Sphere(radius=33, centre=(19, 33, 22)),
        Sphere(radius=33, centre=(20, 33, 22)),
        None,
        [0.350217, 0.3483278807706289],
    ),
    DistanceCase(
        "TEST_CASES[3]",
        Sphere(radius=20, centre=(20, 33, 22)),
        Sphere(radius=40, centre=(20, 33, 22)),
        None,
        [15.117741, 12.040033513150455],
    ),
    DistanceCase(
        "TEST_CASES[4]",
        Sphere(radius=20, centre=(20, 33, 22)),
        Sphere(radius=40, centre=(20, 33, 22)),
        None,
        [11.492719, 9.605067064083457],
        distance_metric="chessboard",
    ),
    DistanceCase(
        "TEST_CASES[5]",
        Sphere(radius=20, centre=(20, 33, 22)),
        Sphere(radius=40, centre=(20, 33, 22)),
        None,
        [20.214613, 12.432687531048186],
        distance_metric="taxicab",
    ),
    DistanceCase("TEST_CASES[6]", Empty(), Sphere(radius=40, centre=(20, 33, 22)), None, [np.inf, np.inf]),
    DistanceCase("TEST_CASES[7]", Sphere(), Empty(), None, [np.inf, np.inf], distance_metric="taxicab"),
    DistanceCase(
        "TEST_CASES[8]",
        Sphere(radius=33, centre=(42, 45, 52), im_spacing=_TEST_SPACING),
        Sphere(radius=33, centre=(43, 45, 52), im_spacing=_TEST_SPACING),
        _TEST_SPACING,
        [0.4951, 0.4951],
    ),
]

#: Both masks empty (``TEST_CASES_NANS``): spacing None and given.
SURFACE_DISTANCE_NANS = [None, _TEST_SPACING]
