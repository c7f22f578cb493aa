"""Surface distances: hand-worked cases, and agreement with medpy, MONAI and DeepMind's surface-distance."""

import numpy as np
import pytest
import torch
from medpy.metric import binary as medpy_binary
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from medseg.metrics import image_diagonal, surface_distances, surface_voxels

from ._masks import blob

SPACINGS = {2: (0.6, 1.7), 3: (2.0, 0.7, 1.3)}
SHAPES = {2: (40, 37), 3: (22, 20, 18)}


def square_with_far_pixel() -> tuple[np.ndarray, np.ndarray]:
    """Reference: a 2×2 square; prediction: the same square plus one pixel 7 pixels to the right of it."""
    ref = np.zeros((8, 14), dtype=bool)
    ref[2:4, 2:4] = True
    pred = ref.copy()
    pred[2, 10] = True
    return pred, ref


def test_hd95_max_of_directed_percentiles_differs_from_pooled():
    pred, ref = square_with_far_pixel()
    distances = surface_distances(pred, ref)
    # pred→ref: four square pixels at 0, the far pixel (2, 10) at 7 from (2, 3); ref→pred: four zeros.
    # directed P95 of [0, 0, 0, 0, 7]: position 0.95·4 = 3.8 → 0 + 0.8·7 = 5.6; the other direction 0.
    assert distances.hausdorff_percentile(95) == pytest.approx(5.6)
    # pooled [0]*8 + [7]: position 0.95·8 = 7.6 → 0.6·7 = 4.2 (medpy's hd95)
    assert distances.hausdorff_percentile(95, pooled=True) == pytest.approx(4.2)
    assert medpy_binary.hd95(pred, ref) == pytest.approx(4.2)
    assert distances.hausdorff() == 7.0
    # ASSD pools the 9 surface elements: 7 / 9 (medpy's assd would average the directed means: (7/5 + 0) / 2)
    assert distances.average_symmetric() == pytest.approx(7 / 9)
    # NSD at 1: 8 of 9 elements within
    assert distances.surface_dice(1.0) == pytest.approx(8 / 9)


def test_nsd_counts_a_distance_equal_to_the_tolerance():
    pred, ref = square_with_far_pixel()
    assert surface_distances(pred, ref, spacing=(0.7, 0.7)).surface_dice(7 * 0.7) == 1.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_surface_voxels_equal_mask_xor_scipy_erosion(ndim):
    mask = blob(SHAPES[ndim], seed=3, fraction=0.5)
    mask[(0,) * ndim] = True  # the image border counts as background
    assert np.array_equal(surface_voxels(mask), mask ^ ndimage.binary_erosion(mask))


@pytest.mark.parametrize("ndim", [2, 3])
def test_voxel_distances_agree_with_medpy(ndim):
    pred, ref = blob(SHAPES[ndim], seed=1), blob(SHAPES[ndim], seed=2)
    spacing = SPACINGS[ndim]
    distances = surface_distances(pred, ref, spacing)
    assert distances.hausdorff() == pytest.approx(medpy_binary.hd(pred, ref, spacing), rel=1e-6)
    assert distances.hausdorff_percentile(95, pooled=True) == pytest.approx(
        medpy_binary.hd95(pred, ref, spacing), rel=1e-6
    )
    directed_means = (distances.pred_to_ref.mean(), distances.ref_to_pred.mean())
    assert directed_means == pytest.approx((medpy_binary.asd(pred, ref, spacing), medpy_binary.asd(ref, pred, spacing)))


@pytest.mark.parametrize("ndim", [2, 3])
def test_voxel_distances_without_spacing_equal_medpy_exactly(ndim):
    pred, ref = blob(SHAPES[ndim], seed=4), blob(SHAPES[ndim], seed=5)
    distances = surface_distances(pred, ref)
    assert distances.hausdorff_percentile(95, pooled=True) == medpy_binary.hd95(pred, ref)
    assert distances.hausdorff() == medpy_binary.hd(pred, ref)


def _monai_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(pred[None, None].astype(np.float32)), torch.from_numpy(ref[None, None].astype(np.float32))


@pytest.mark.parametrize("ndim", [2, 3])
def test_voxel_distances_agree_with_monai(ndim):
    pred, ref = blob(SHAPES[ndim], seed=6), blob(SHAPES[ndim], seed=7)
    spacing = SPACINGS[ndim]
    distances = surface_distances(pred, ref, spacing)
    y_pred, y = _monai_pair(pred, ref)
    common = {"include_background": True, "spacing": list(spacing)}
    assert distances.hausdorff_percentile(95) == pytest.approx(
        compute_hausdorff_distance(y_pred, y, percentile=95, **common).item(), rel=1e-5
    )
    assert distances.hausdorff() == pytest.approx(compute_hausdorff_distance(y_pred, y, **common).item(), rel=1e-5)
    assert distances.average_symmetric() == pytest.approx(
        compute_average_surface_distance(y_pred, y, symmetric=True, **common).item(), rel=1e-5
    )
    for tolerance in (0.5, 1.0, 2.5):
        assert distances.surface_dice(tolerance) == pytest.approx(
            compute_surface_dice(y_pred, y, [tolerance], **common).item(), rel=1e-5
        )


@pytest.mark.parametrize("ndim", [2, 3])
def test_surfel_nsd_agrees_with_monai_subvoxels(ndim):
    pred, ref = blob(SHAPES[ndim], seed=8), blob(SHAPES[ndim], seed=9)
    spacing = SPACINGS[ndim]
    distances = surface_distances(pred, ref, spacing, surface="surfels")
    y_pred, y = _monai_pair(pred, ref)
    for tolerance in (1.0, 2.0):
        expected = compute_surface_dice(
            y_pred, y, [tolerance], include_background=True, spacing=list(spacing), use_subvoxels=True
        ).item()
        assert distances.surface_dice(tolerance) == pytest.approx(expected, rel=1e-5)


@pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")  # its scipy.ndimage.filters imports
@pytest.mark.parametrize("ndim", [2, 3])
def test_surfels_agree_with_deepmind_surface_distance(ndim):
    deepmind = pytest.importorskip("surface_distance")  # pip install --no-deps surface-distance
    pred, ref = blob(SHAPES[ndim], seed=10), blob(SHAPES[ndim], seed=11)
    spacing = SPACINGS[ndim]
    distances = surface_distances(pred, ref, spacing, surface="surfels")
    reference = deepmind.compute_surface_distances(ref, pred, spacing)  # DeepMind's order: (gt, pred)
    assert distances.hausdorff_percentile(95) == pytest.approx(
        deepmind.compute_robust_hausdorff(reference, 95), rel=1e-6
    )
    assert distances.hausdorff() == pytest.approx(deepmind.compute_robust_hausdorff(reference, 100), rel=1e-6)
    for tolerance in (0.5, 1.0, 2.0):
        assert distances.surface_dice(tolerance) == pytest.approx(
            deepmind.compute_surface_dice_at_tolerance(reference, tolerance), rel=1e-6
        )
    # ASSD pools both directions weighted by area: recombine DeepMind's directed means with its total areas
    mean_gt_to_pred, mean_pred_to_gt = deepmind.compute_average_surface_distance(reference)
    area_gt, area_pred = reference["surfel_areas_gt"].sum(), reference["surfel_areas_pred"].sum()
    pooled = (mean_gt_to_pred * area_gt + mean_pred_to_gt * area_pred) / (area_gt + area_pred)
    assert distances.average_symmetric() == pytest.approx(pooled, rel=1e-6)


def test_empty_masks_are_refused():
    mask = np.zeros((5, 5), dtype=bool)
    full = mask.copy()
    full[2, 2] = True
    with pytest.raises(ValueError, match="prediction is empty"):
        surface_distances(mask, full)
    with pytest.raises(ValueError, match="both masks are empty"):
        surface_distances(mask, mask)


@pytest.mark.parametrize(
    ("pred", "ref", "spacing", "message"),
    [
        (np.ones((3, 4), bool), np.ones((4, 3), bool), None, "differs from reference shape"),
        (np.ones((2, 2, 2, 2), bool), np.ones((2, 2, 2, 2), bool), None, "2D or 3D"),
        (np.ones((3, 3), bool), np.ones((3, 3), bool), (1.0,), "spacing must give 2"),
        (np.ones((3, 3), bool), np.ones((3, 3), bool), (1.0, -1.0), "positive"),
    ],
)
def test_bad_input_raises(pred, ref, spacing, message):
    with pytest.raises(ValueError, match=message):
        surface_distances(pred, ref, spacing)


def test_bad_percentile_and_tolerance_raise():
    pred, ref = square_with_far_pixel()
    distances = surface_distances(pred, ref)
    with pytest.raises(ValueError, match="percentile"):
        distances.hausdorff_percentile(101)
    with pytest.raises(ValueError, match="tolerance"):
        distances.surface_dice(-1.0)
    with pytest.raises(ValueError, match="voxel surfaces only"):
        surface_distances(pred, ref, surface="surfels").hausdorff_percentile(95, pooled=True)


def test_voxel_step_distances_hand_worked():
    """A 2×2 square against the square plus one pixel at (6, 10): its nearest square pixel (3, 3) is 3 rows and 7
    columns away: chessboard max(3, 7) = 7, taxicab 3 + 7 = 10, Euclidean sqrt(58)."""
    ref = np.zeros((8, 14), dtype=bool)
    ref[2:4, 2:4] = True
    pred = ref.copy()
    pred[6, 10] = True
    assert surface_distances(pred, ref, distance_metric="chessboard").hausdorff() == 7.0
    assert surface_distances(pred, ref, distance_metric="taxicab").hausdorff() == 10.0
    assert surface_distances(pred, ref).hausdorff() == pytest.approx(np.sqrt(58))
    # directed: prediction → reference only; the reference → prediction distances are all 0
    assert surface_distances(pred, ref, distance_metric="taxicab").hausdorff(directed=True) == 10.0
    assert surface_distances(ref, pred, distance_metric="taxicab").hausdorff(directed=True) == 0.0


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(("distance_metric", "scipy_name"), [("chessboard", "chebyshev"), ("taxicab", "cityblock")])
def test_voxel_step_distances_equal_brute_force(ndim, distance_metric, scipy_name):
    """Every surface voxel's L∞ / L1 distance to the other surface, by brute force over coordinate pairs."""
    from scipy.spatial.distance import cdist

    pred, ref = blob(SHAPES[ndim], seed=12), blob(SHAPES[ndim], seed=13)
    distances = surface_distances(pred, ref, distance_metric=distance_metric)
    pred_points, ref_points = np.argwhere(surface_voxels(pred)), np.argwhere(surface_voxels(ref))
    pairwise = cdist(pred_points, ref_points, metric=scipy_name)
    np.testing.assert_array_equal(distances.pred_to_ref, pairwise.min(axis=1))
    np.testing.assert_array_equal(distances.ref_to_pred, pairwise.min(axis=0))


@pytest.mark.parametrize("ndim", [2, 3])
def test_directed_hausdorff_and_mean_agree_with_scipy_and_medpy(ndim):
    from scipy.spatial.distance import directed_hausdorff

    pred, ref = blob(SHAPES[ndim], seed=14), blob(SHAPES[ndim], seed=15)
    spacing = SPACINGS[ndim]
    distances = surface_distances(pred, ref, spacing)
    scale = np.asarray(spacing)
    pred_points = np.argwhere(surface_voxels(pred)) * scale
    ref_points = np.argwhere(surface_voxels(ref)) * scale
    assert distances.hausdorff(directed=True) == pytest.approx(directed_hausdorff(pred_points, ref_points)[0])
    assert distances.average_directed() == pytest.approx(medpy_binary.asd(pred, ref, spacing))
    assert distances.hausdorff_percentile(95, directed=True) == pytest.approx(np.percentile(distances.pred_to_ref, 95))


def test_voxel_step_distances_take_no_spacing():
    pred, ref = square_with_far_pixel()
    with pytest.raises(ValueError, match="take no spacing"):
        surface_distances(pred, ref, spacing=(0.5, 0.5), distance_metric="chessboard")
    with pytest.raises(ValueError, match="distance_metric must be"):
        surface_distances(pred, ref, distance_metric="cosine")
    with pytest.raises(ValueError, match="cannot pool"):
        surface_distances(pred, ref).hausdorff_percentile(95, pooled=True, directed=True)


def test_image_diagonal_in_each_distance():
    assert image_diagonal((12, 10, 8), (2.0, 1.0, 0.5)) == pytest.approx(np.sqrt(22**2 + 9**2 + 3.5**2))
    assert image_diagonal((12, 10, 8), (2.0, 1.0, 0.5), "chessboard") == 11.0
    assert image_diagonal((12, 10, 8), (2.0, 1.0, 0.5), "taxicab") == 27.0
