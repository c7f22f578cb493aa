"""Scoring a structure and a case under each convention: hand-worked cube, empty policies, medpy and MONAI parity."""

import math

import numpy as np
import pytest
import torch
from medpy.metric import binary as medpy_binary
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)

from medseg.metrics import CONVENTIONS, Convention, get_convention, score_label_maps, score_masks

from ._masks import label_volume

CLINICAL = get_convention("clinical")
TRANSUNET = get_convention("transunet")
NNUNET = get_convention("nnunet")


def cubes() -> tuple[np.ndarray, np.ndarray]:
    """Reference: a 4×4×4 cube at [2:6]³ of a 12³ image; prediction: the same cube one voxel further along axis 0."""
    ref = np.zeros((12, 12, 12), dtype=bool)
    ref[2:6, 2:6, 2:6] = True
    pred = np.zeros_like(ref)
    pred[3:7, 2:6, 2:6] = True
    return pred, ref


def test_shifted_cube_with_anisotropic_spacing():
    pred, ref = cubes()
    # spacing 2 mm along the shift (axis 0), 1 mm along axis 1, 0.5 mm along axis 2
    row = score_masks(pred, ref, (2.0, 1.0, 0.5), CLINICAL, nsd_tolerance=1.0)
    # overlap: 3·4·4 = 48 voxels of 64 each → Dice 96/128, IoU 48/80
    assert row["dice"] == 0.75
    assert row["iou"] == pytest.approx(0.6)
    # each cube has 64 − 2³ = 56 surface voxels. Prediction → reference: its 16 voxels of face z=6 lie 1 voxel
    # (2 mm) beyond the reference's face z=5; the 4 inner voxels of its face z=3 lie inside the reference, 1 voxel
    # from its side wall along axis 2 (0.5 mm, closer than 1 mm along axis 1 or 2 mm along axis 0); the other 36
    # lie on the reference surface (0). The reference → prediction distances mirror these.
    assert row["hd_mm"] == 2.0
    # directed P95 of 36×0, 4×0.5, 16×2: position 0.95·55 = 52.25 falls among the 2 mm values
    assert row["hd95_mm"] == 2.0
    # ASSD = (2·(16·2 + 4·0.5)) / 112 = 68 / 112
    assert row["assd_mm"] == pytest.approx(68 / 112)
    # NSD at 1 mm: 40 of 56 elements within on each side
    assert row["nsd"] == pytest.approx(80 / 112)
    assert score_masks(pred, ref, (2.0, 1.0, 0.5), CLINICAL, nsd_tolerance=0.4)["nsd"] == pytest.approx(72 / 112)
    # 64 voxels of 2·1·0.5 mm³ = 64 mm³ = 0.064 mL each
    assert row["volume_ref_ml"] == pytest.approx(0.064)
    assert row["volume_pred_ml"] == pytest.approx(0.064)
    assert row["volume_diff_ml"] == 0.0
    assert row["volume_diff_percent"] == 0.0
    assert row["empty_mask"] == "none"


def test_shifted_cube_transunet_ignores_spacing():
    pred, ref = cubes()
    row = score_masks(pred, ref, (2.0, 1.0, 0.5), TRANSUNET)
    # in voxels every non-zero distance is 1: pooled P95 of 72 zeros and 40 ones (position 105.45) is 1
    assert row == {
        "dice": 0.75,
        "hd95_voxels": 1.0,
        "volume_ref_ml": pytest.approx(0.064),
        "volume_pred_ml": pytest.approx(0.064),
        "volume_diff_ml": 0.0,
        "volume_diff_percent": 0.0,
        "empty_mask": "none",
    }


def test_areas_for_2d_images():
    ref = np.zeros((6, 6), dtype=bool)
    ref[1:3, 1:4] = True  # 6 pixels of 0.5·2 mm²
    row = score_masks(ref[::-1], ref, (0.5, 2.0), NNUNET)
    assert row["area_ref_mm2"] == 6.0
    assert row["area_diff_percent"] == 0.0


IMAGE = (12, 10, 8)
SPACING = (2.0, 1.0, 0.5)
# the worst case: the image diagonal between corner voxel centres, sqrt((11·2)² + (9·1)² + (7·0.5)²)
DIAGONAL_MM = math.sqrt(22**2 + 9**2 + 3.5**2)


def masks(pred_present: bool, ref_present: bool) -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros(IMAGE, dtype=bool)
    ref = np.zeros(IMAGE, dtype=bool)
    pred[2:5, 2:5, 2:5] = pred_present
    ref[3:6, 3:6, 3:6] = ref_present
    return pred, ref


@pytest.mark.parametrize(
    ("convention", "pred_present", "ref_present", "expected"),
    [
        # Metrics Reloaded: both empty is a correct result; one empty is a failure at the worst distance
        (CLINICAL, False, False, {"dice": 1, "iou": 1, "hd_mm": 0, "hd95_mm": 0, "assd_mm": 0, "nsd": 1}),
        (
            CLINICAL,
            True,
            False,
            {"dice": 0, "iou": 0, "hd_mm": DIAGONAL_MM, "hd95_mm": DIAGONAL_MM, "assd_mm": DIAGONAL_MM, "nsd": 0},
        ),
        (
            CLINICAL,
            False,
            True,
            {"dice": 0, "iou": 0, "hd_mm": DIAGONAL_MM, "hd95_mm": DIAGONAL_MM, "assd_mm": DIAGONAL_MM, "nsd": 0},
        ),
        # TransUNet: (1, 0) for a prediction of an absent organ, (0, 0) for an empty prediction, also if both empty
        (TRANSUNET, False, False, {"dice": 0, "hd95_voxels": 0}),
        (TRANSUNET, True, False, {"dice": 1, "hd95_voxels": 0}),
        (TRANSUNET, False, True, {"dice": 0, "hd95_voxels": 0}),
        # nnU-Net: NaN when both are empty, the formula's 0 otherwise
        (NNUNET, False, False, {"dice": math.nan, "iou": math.nan}),
        (NNUNET, True, False, {"dice": 0, "iou": 0}),
        (NNUNET, False, True, {"dice": 0, "iou": 0}),
    ],
)
def test_empty_policies(convention, pred_present, ref_present, expected):
    pred, ref = masks(pred_present, ref_present)
    row = score_masks(pred, ref, SPACING, convention)
    assert {k: row[k] for k in expected} == pytest.approx(expected, nan_ok=True)
    assert (
        row["empty_mask"]
        == {(False, False): "both", (True, False): "reference", (False, True): "prediction"}[
            (pred_present, ref_present)
        ]
    )
    if not ref_present:
        assert math.isnan(row["volume_diff_percent"])


def test_worst_distance_uses_the_whole_image_when_scoring_a_crop():
    pred, ref = masks(True, False)
    row = score_masks(pred[2:5, 2:5, 2:5], ref[2:5, 2:5, 2:5], SPACING, CLINICAL, image_shape=IMAGE)
    assert row["hd_mm"] == pytest.approx(DIAGONAL_MM)


def transunet_reference(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """TransUNet's calculate_metric_percase (utils.py), re-implemented with medpy."""
    pred, gt = pred > 0, gt > 0
    if pred.sum() > 0 and gt.sum() > 0:
        return medpy_binary.dc(pred, gt), medpy_binary.hd95(pred, gt)
    if pred.sum() > 0:
        return 1.0, 0.0
    return 0.0, 0.0


def test_transunet_mode_equals_the_published_protocol_exactly():
    ref = label_volume((20, 24, 22), num_labels=5, seed=0)
    pred = label_volume((20, 24, 22), num_labels=5, seed=1)
    ref[ref == 4] = 0  # organ 4 absent from the reference, predicted: (1, 0)
    pred[pred == 5] = 0  # organ 5 not predicted: (0, 0)
    labels = {k: f"organ {k}" for k in range(1, 8)}  # 6, 7 absent from both: (0, 0)
    rows = score_label_maps(pred, ref, (3.0, 0.8, 0.8), labels, TRANSUNET)
    for row in rows:
        dice, hd95 = transunet_reference(pred == row["label"], ref == row["label"])
        assert (row["dice"], row["hd95_voxels"]) == (dice, hd95), row["structure"]
    assert [(r["dice"], r["hd95_voxels"]) for r in rows[3:]] == [(1.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]


def test_clinical_label_maps_agree_with_monai_per_structure():
    ref = label_volume((20, 18, 16), num_labels=4, seed=2)
    pred = label_volume((20, 18, 16), num_labels=4, seed=3)
    spacing = (2.5, 0.9, 0.9)
    rows = score_label_maps(pred, ref, spacing, {1: "a", 2: "b", 3: "c", 4: "d"}, CLINICAL, nsd_tolerance=1.5)
    one_hot = [torch.from_numpy(np.stack([v == k for k in range(5)])[None].astype(np.float32)) for v in (pred, ref)]
    common = {"include_background": False, "spacing": list(spacing)}
    expected = {
        "dice": compute_dice(*one_hot, include_background=False)[0],
        "hd_mm": compute_hausdorff_distance(*one_hot, **common)[0],
        "hd95_mm": compute_hausdorff_distance(*one_hot, percentile=95, **common)[0],
        "assd_mm": compute_average_surface_distance(*one_hot, symmetric=True, **common)[0],
        "nsd": compute_surface_dice(*one_hot, [1.5] * 4, **common)[0],
    }
    for index, row in enumerate(rows):
        for column, values in expected.items():
            assert row[column] == pytest.approx(values[index].item(), rel=1e-5), (row["structure"], column)


def test_nnunet_mode_reports_dice_and_iou():
    ref = label_volume((10, 12), num_labels=2, seed=4)
    pred = label_volume((10, 12), num_labels=2, seed=5)
    rows = score_label_maps(pred, ref, (1.0, 1.0), {1: "a", 2: "b", 3: "absent"}, NNUNET)
    for row in rows[:2]:
        p, r = pred == row["label"], ref == row["label"]
        tp, fp, fn = (p & r).sum(), (p & ~r).sum(), (~p & r).sum()
        assert row["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert row["iou"] == pytest.approx(tp / (tp + fp + fn))
        assert "hd95_mm" not in row
    assert math.isnan(rows[2]["dice"])


def test_background_label_is_not_scored():
    ref = label_volume((8, 8), num_labels=2, seed=6)
    rows = score_label_maps(ref, ref, (1.0, 1.0), {0: "background", 1: "a", 2: "b"}, NNUNET)
    assert [r["structure"] for r in rows] == ["a", "b"]


@pytest.mark.parametrize(
    ("pred", "ref", "labels", "message"),
    [
        (np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), {1: "a"}, "differs from reference shape"),
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), {1: "a"}, "must hold integers"),
        (np.zeros(4, np.uint8), np.zeros(4, np.uint8), {1: "a"}, "2D or 3D"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), {0: "background"}, "positive label values"),
    ],
)
def test_bad_label_maps_raise(pred, ref, labels, message):
    with pytest.raises(ValueError, match=message):
        score_label_maps(pred, ref, (1.0,) * pred.ndim, labels, CLINICAL)


def test_conventions_describe_their_rules():
    described = get_convention("clinical", "surfels").describe(nsd_tolerance=2.0)
    assert described["nsd_tolerance_mm"] == 2.0
    assert described["surface"] == "surfels"
    assert "DeepMind" in described["hd95"]
    assert described["empty_policy"]["reference_empty_prediction_not"]["hd95_mm"] == "image diagonal (worst case)"
    assert "pooled" in CONVENTIONS["transunet"].describe()["hd95"]
    assert CONVENTIONS["nnunet"].describe()["hd95"] == "not reported"


def test_bad_conventions_raise():
    with pytest.raises(ValueError, match="unknown convention"):
        get_convention("medpy")
    with pytest.raises(ValueError, match="does not apply"):
        get_convention("transunet", "surfels")
    with pytest.raises(ValueError, match="must give"):
        Convention("x", ("dice",), True, "max_directed", {}, {"dice": 0.0}, {"dice": 0.0}, "")
    with pytest.raises(ValueError, match="unknown metrics"):
        Convention("x", ("accuracy",), True, "max_directed", {}, {}, {}, "")


MONAI = get_convention("monai")
NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("convention", "pred_present", "ref_present", "expected"),
    [
        # MONAI 1.6.1 (tests/metrics/test_monai_compat.py checks these against MONAI's functions)
        (MONAI, False, False, {"dice": NAN, "iou": NAN, "hd_mm": NAN, "hd95_mm": NAN, "assd_mm": NAN, "nsd": NAN}),
        (MONAI, True, False, {"dice": NAN, "iou": NAN, "hd_mm": INF, "hd95_mm": NAN, "assd_mm": INF, "nsd": 0}),
        (MONAI, False, True, {"dice": 0, "iou": 0, "hd_mm": INF, "hd95_mm": NAN, "assd_mm": INF, "nsd": 0}),
        # the worst case in the distance measured: chessboard max(n_i − 1) = 11, taxicab Σ(n_i − 1) = 11 + 9 + 7
        (get_convention("clinical", distance_metric="chessboard"), True, False, {"hd_voxels": 11, "assd_voxels": 11}),
        (get_convention("clinical", distance_metric="taxicab"), False, True, {"hd_voxels": 27, "hd95_voxels": 27}),
    ],
)
def test_empty_policies_of_monai_and_of_the_voxel_step_distances(convention, pred_present, ref_present, expected):
    pred, ref = masks(pred_present, ref_present)
    row = score_masks(pred, ref, SPACING, convention)
    assert {k: row[k] for k in expected} == pytest.approx(expected, nan_ok=True)


def monai_per_structure(pred, ref, spacing, n_labels, distance_metric, tolerance):
    """MONAI 1.6's metric classes (the monai convention's defaults) on the one-hot label maps, per structure."""
    from monai.metrics import (
        DiceMetric,
        HausdorffDistanceMetric,
        MeanIoU,
        SurfaceDiceMetric,
        SurfaceDistanceMetric,
    )

    one_hot = [
        torch.from_numpy(np.stack([v == k for k in range(n_labels + 1)])[None].astype(np.float32)) for v in (pred, ref)
    ]
    common = {"include_background": False, "reduction": "none"}
    distance = {**common, "distance_metric": distance_metric}
    metrics = {
        "dice": DiceMetric(**common),
        "iou": MeanIoU(**common),
        "hd": HausdorffDistanceMetric(**distance),
        "hd95": HausdorffDistanceMetric(percentile=95, **distance),
        "assd": SurfaceDistanceMetric(symmetric=True, **distance),
        "nsd": SurfaceDiceMetric([tolerance] * n_labels, **distance),
    }
    out = {}
    for name, metric in metrics.items():
        if name in ("dice", "iou"):
            metric(*one_hot)
        else:
            metric(*one_hot, spacing=list(spacing))
        out[name] = metric.aggregate()[0].tolist()
    return out


@pytest.mark.filterwarnings("ignore:the (ground truth|prediction) of class:UserWarning")
@pytest.mark.parametrize("distance_metric", ["euclidean", "chessboard", "taxicab"])
def test_monai_convention_equals_monai_metric_classes(distance_metric):
    """NaN and inf where MONAI's classes give them, bit for bit; finite values to float32 precision."""
    ref = label_volume((18, 16, 14), num_labels=5, seed=12)
    pred = label_volume((18, 16, 14), num_labels=5, seed=13)
    ref[ref == 3] = 0  # predicted, not in the reference
    pred[pred == 4] = 0  # in the reference, not predicted
    labels = {k: f"s{k}" for k in range(1, 7)}  # 6: in neither
    spacing = (2.5, 0.9, 0.8)
    convention = get_convention("monai", distance_metric=distance_metric)
    rows = score_label_maps(pred, ref, spacing, labels, convention, nsd_tolerance=1.5)
    expected = monai_per_structure(pred, ref, spacing, 6, distance_metric, 1.5)
    assert [r["empty_mask"] for r in rows] == ["none", "none", "reference", "prediction", "none", "both"]
    for metric, values in expected.items():
        column = convention.column(metric)
        for row, value in zip(rows, values, strict=True):
            ours = row[column]
            if math.isnan(value) or math.isinf(value):
                assert math.isnan(ours) if math.isnan(value) else ours == value, (row["structure"], column)
            else:
                assert ours == pytest.approx(value, rel=1e-6), (row["structure"], column)


def test_monai_convention_on_surfels_gives_monais_subvoxel_nsd():
    from monai.metrics import compute_surface_dice

    ref = label_volume((16, 14, 12), num_labels=2, seed=14)
    pred = label_volume((16, 14, 12), num_labels=2, seed=15)
    spacing = (1.5, 0.9, 0.8)
    rows = score_label_maps(pred, ref, spacing, {1: "a", 2: "b"}, get_convention("monai", "surfels"), 1.0)
    one_hot = [torch.from_numpy(np.stack([v == k for k in range(3)])[None].astype(np.float32)) for v in (pred, ref)]
    expected = compute_surface_dice(*one_hot, [1.0, 1.0], spacing=list(spacing), use_subvoxels=True)[0]
    assert [r["nsd"] for r in rows] == pytest.approx(expected.tolist(), rel=1e-6)


def test_voxel_step_distances_are_in_voxels():
    pred, ref = cubes()
    row = score_masks(pred, ref, (2.0, 1.0, 0.5), get_convention("clinical", distance_metric="taxicab"))
    # the cube shifted one voxel: every non-zero distance is one voxel step, whatever the spacing
    assert (row["hd_voxels"], row["hd95_voxels"]) == (1.0, 1.0)
    # on each side the 16 voxels of the far face and the 4 inner voxels of the near face are one step away
    assert row["assd_voxels"] == pytest.approx(40 / 112)
    assert "hd_mm" not in row


def test_monai_convention_describes_its_rules():
    described = get_convention("monai", distance_metric="chessboard").describe(nsd_tolerance=2.0)
    assert described["distance_metric"] == "chessboard"
    assert described["distance_unit"] == "voxels"
    assert described["nsd_tolerance_voxels"] == 2.0
    assert "chessboard" in described["hd95"]
    assert described["empty_policy"]["reference_empty_prediction_not"] == {
        "dice": "NaN",
        "iou": "NaN",
        "hd_voxels": "inf",
        "hd95_voxels": "NaN",
        "assd_voxels": "inf",
        "nsd": 0.0,
    }
    assert "kept" in described["absent_structures"]
    assert "not scored" in CLINICAL.describe()["absent_structures"]


@pytest.mark.parametrize(("name", "message"), [("transunet", "medpy Euclidean"), ("nnunet", "no surface metrics")])
def test_voxel_step_distances_are_refused_where_the_protocol_fixes_them(name, message):
    with pytest.raises(ValueError, match=message):
        get_convention(name, distance_metric="chessboard")
    with pytest.raises(ValueError, match="distance_metric must be one of"):
        get_convention("clinical", distance_metric="cosine")  # type: ignore[arg-type]
