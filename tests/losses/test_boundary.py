"""Boundary losses: MONAI and kornia parity, hand-worked cases, plain re-computations, cached maps against the
on-the-fly path, and bad maps."""

from __future__ import annotations

import math

import kornia.losses
import monai.losses
import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.losses import (
    ActiveBoundaryLoss,
    BoundaryDoULoss,
    BoundaryLoss,
    HausdorffDTLoss,
    HausdorffERLoss,
    RegionWiseLoss,
    ShapeAwareLoss,
    UNetWeightedCELoss,
    get_loss,
)
from medseg.transforms import DistanceMapd, distance_maps

IGNORE = 255
TOL = 1e-5
SPATIAL = [(7, 6), (5, 4, 6)]
SPATIAL_IDS = ["2d", "3d"]


def batch(spatial=(7, 6), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, classes, *spatial, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (2, 1, *spatial), generator=g)
    return x, y


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0].long(), classes).movedim(-1, 1).double()


def with_ignored(y: torch.Tensor) -> torch.Tensor:
    y = y.clone()
    y[0, 0, :2] = IGNORE
    y[1, 0, ..., -1] = IGNORE
    return y


def every_class_has_a_boundary(y: torch.Tensor, classes: int) -> bool:
    present = one_hot(y, classes).flatten(2).sum(2)
    return bool(((present > 0) & (present < present.sum(1, keepdim=True))).all())


def as_probabilities(*class_probs) -> torch.Tensor:
    """Per-class probability rows as a (1, C, 1, N) image (no activation needed)."""
    return torch.tensor(class_probs, dtype=torch.float64).view(1, len(class_probs), 1, -1)


def row_labels(values) -> torch.Tensor:
    return torch.tensor(values).view(1, 1, 1, -1)


# ------------------------------------------------------------------------------------------------- boundary loss
@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"softmax": True},
        {"softmax": True, "include_background": False},
        {"softmax": True, "batch": True},
        {"softmax": True, "reduction": "sum"},
        {"softmax": True, "reduction": "none"},
        {"sigmoid": True, "batch": True, "reduction": "none"},
        {"other_act": torch.tanh},
    ],
    ids=["default", "no_background", "batch", "sum", "none", "sigmoid_batch_none", "other_act"],
)
def test_boundary_matches_monai(spatial, kwargs):
    x, y = batch(spatial)
    assert every_class_has_a_boundary(y, 3)  # MONAI's map is 0 for empty and full classes, ours ±diagonal
    x.requires_grad_(True)
    ours = BoundaryLoss(**kwargs)(x, y)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    ref = monai.losses.BoundaryLoss(to_onehot_y=True, **kwargs)(x, y)
    (grad_ref,) = torch.autograd.grad(ref.sum(), x)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref.double(), atol=TOL)
    assert torch.allclose(grad_ours, grad_ref.double(), atol=TOL)


def test_boundary_hand_worked():
    # labels 0 0 1 1 in a 1x4 image. Signed maps (1 - distance inside, distance outside):
    #   class 1: [2, 1, 0, -1]; class 0: [-1, 0, 1, 2]
    # p1 = [.1 .4 .7 .9]: mean(p1 phi1) = (.2 + .4 + 0 - .9) / 4 = -.075
    # p0 = [.9 .6 .3 .1]: mean(p0 phi0) = (-.9 + 0 + .3 + .2) / 4 = -.1       -> mean over classes -.0875
    p1 = [0.1, 0.4, 0.7, 0.9]
    x = as_probabilities([1 - v for v in p1], p1)
    loss = BoundaryLoss(reduction="none")(x, row_labels([0, 0, 1, 1]))
    assert torch.allclose(loss, torch.tensor([[-0.1, -0.075]], dtype=torch.float64))
    assert torch.isclose(BoundaryLoss()(x, row_labels([0, 0, 1, 1])), torch.tensor(-0.0875, dtype=torch.float64))


def test_boundary_is_negative_at_a_perfect_prediction_and_lowest_there():
    x, y = batch((8, 8), seed=3)
    perfect = 20.0 * (2 * one_hot(y, 3) - 1)
    loss = BoundaryLoss(softmax=True)
    best = loss(perfect, y)
    assert best < 0
    for other in (x, perfect + x, perfect.roll(1, dims=-1)):
        assert best <= loss(other, y)


def test_boundary_absent_and_full_classes_use_the_patch_diagonal():
    # 4x3 patch: diagonal 5. Item all class 1 of 2: class 0 absent (map +5), class 1 full (map -5)
    y = torch.ones(1, 1, 4, 3, dtype=torch.long)
    x = as_probabilities([0.25] * 12, [0.75] * 12).view(1, 2, 4, 3)
    per_class = BoundaryLoss(reduction="none")(x, y)
    assert torch.allclose(per_class, torch.tensor([[0.25 * 5, -0.75 * 5]], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- region-wise loss
def test_region_wise_hand_worked():
    # labels 0 0 1 1. RRW maps (-d/max d inside, 1 outside): class 1 [1, 1, -.5, -1]; class 0 [-1, -.5, 1, 1]
    # p1 = [.1 .4 .7 .9]: (.1 + .4 - .35 - .9) / 4 = -.1875; p0 = [.9 .6 .3 .1]: (-.9 - .3 + .3 + .1) / 4 = -.2
    p1 = [0.1, 0.4, 0.7, 0.9]
    x = as_probabilities([1 - v for v in p1], p1)
    loss = RegionWiseLoss(reduction="none")(x, row_labels([0, 0, 1, 1]))
    assert torch.allclose(loss, torch.tensor([[-0.2, -0.1875]], dtype=torch.float64))


def test_region_wise_absent_class_costs_its_mean_probability():
    x, y = batch((6, 6), seed=4)
    y = y.clamp(max=1)  # class 2 absent: its map is all 1
    per_class = RegionWiseLoss(softmax=True, reduction="none")(x, y)
    assert torch.allclose(per_class[:, 2], torch.softmax(x, 1)[:, 2].mean((1, 2)))


# -------------------------------------------------------------------------------------------- Hausdorff DT loss
@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"softmax": True},
        {"softmax": True, "include_background": True},
        {"softmax": True, "batch": True},
        {"softmax": True, "alpha": 1.5, "reduction": "none"},
        {"softmax": True, "batch": True, "reduction": "none"},
        {"sigmoid": True, "reduction": "sum"},
        {"other_act": lambda v: torch.softmax(v, 1) ** 2},
    ],
    ids=["default", "background", "batch", "alpha_none", "batch_none", "sigmoid_sum", "other_act"],
)
def test_hausdorff_dt_matches_monai(spatial, kwargs):
    x, y = batch(spatial)
    y = y.clamp(max=1)  # class 2 absent: MONAI's and our maps are 0 for it
    x.requires_grad_(True)
    ours = HausdorffDTLoss(**kwargs)(x, y)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    ref = monai.losses.HausdorffDTLoss(to_onehot_y=True, **kwargs)(x, y)
    (grad_ref,) = torch.autograd.grad(ref.sum(), x)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref.double(), atol=TOL)
    assert torch.allclose(grad_ours, grad_ref.double(), atol=TOL)


def test_hausdorff_dt_hand_worked():
    # labels 0 0 1 1, p1 = [.1 .4 .7 .9] thresholds to 0 0 1 1: d_p = d_g = [2, 1, 1, 2]
    # (p - g)^2 = [.01 .16 .09 .01], d_p^2 + d_g^2 = [8 2 2 8] -> [.08 .32 .18 .08], mean .165 (class 1 only)
    p1 = [0.1, 0.4, 0.7, 0.9]
    x = as_probabilities([1 - v for v in p1], p1)
    assert torch.isclose(HausdorffDTLoss()(x, row_labels([0, 0, 1, 1])), torch.tensor(0.165, dtype=torch.float64))


def test_hausdorff_dt_with_spacing_matches_scipy_recomputation():
    x, y = batch((6, 7), seed=5)
    spacing = (2.0, 0.5)
    ours = HausdorffDTLoss(softmax=True, include_background=True, spacing=spacing)(x, y)
    probs, onehot = torch.softmax(x, 1).numpy(), one_hot(y, 3).numpy()

    def two_sided(mask):
        if mask.all() or not mask.any():
            return np.zeros(mask.shape)
        return ndimage.distance_transform_edt(mask, sampling=spacing) + ndimage.distance_transform_edt(
            ~mask, sampling=spacing
        )

    terms = []
    for b in range(2):
        for c in range(3):
            field = two_sided(probs[b, c] > 0.5) ** 2 + two_sided(onehot[b, c] > 0) ** 2
            terms.append(((probs[b, c] - onehot[b, c]) ** 2 * field).mean())
    assert math.isclose(float(ours), float(np.mean(terms)), rel_tol=1e-6)


# -------------------------------------------------------------------------------------------- Hausdorff ER loss
@pytest.mark.parametrize("spatial", [(9, 8), (6, 5, 7)], ids=SPATIAL_IDS)
@pytest.mark.parametrize("alpha, k", [(2.0, 10), (1.0, 3)])
def test_hausdorff_er_matches_kornia(spatial, alpha, k):
    x, y = batch(spatial, classes=4)
    x.requires_grad_(True)
    ours = HausdorffERLoss(alpha=alpha, k=k, softmax=True)(x, y)
    (grad_ours,) = torch.autograd.grad(ours, x)
    reference = kornia.losses.HausdorffERLoss if len(spatial) == 2 else kornia.losses.HausdorffERLoss3D
    ref = reference(alpha=alpha, k=k)(torch.softmax(x, 1), y)
    (grad_ref,) = torch.autograd.grad(ref, x)
    assert torch.allclose(ours, ref, atol=TOL)
    assert torch.allclose(grad_ours, grad_ref, atol=TOL)


@pytest.mark.parametrize("k, alpha, expected", [(1, 2.0, 3 / 9), (2, 2.0, 7 / 9), (2, 1.0, 5 / 9)])
def test_hausdorff_er_hand_worked(k, alpha, expected):
    # one channel, error 1 on all of a 3x3 patch. Cross kernel (weights .2, zero padding):
    #   erosion 1: centre 1.0, edge middles .8, corners .6; minus .5 -> .5/.3/.1; min-max -> 1/.5/0
    #   erosion 2 (of that): centre (1 + 4 * .5) * .2 = .6, edge middles (.5 + 1) * .2 = .3, corners (.5+.5) * .2
    #   = .2; minus .5 -> only the centre .1 survives; min-max -> centre 1, others 0
    #   k=1: (1 + 4 * .5) / 9 = 3/9; k=2, alpha=2: centre 1 + 4 * 1, edges .5 -> (5 + 2) / 9; alpha=1: (3 + 2) / 9
    x = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    y = torch.zeros(1, 1, 3, 3, dtype=torch.long)
    loss = HausdorffERLoss(alpha=alpha, k=k)(x, y)
    assert torch.isclose(loss, torch.tensor(expected, dtype=torch.float64))


def test_hausdorff_er_gradcheck_3d():
    x, y = batch((4, 3, 4), seed=6)
    loss = HausdorffERLoss(softmax=True, k=3, ignore_index=IGNORE)
    y = with_ignored(y)
    assert torch.autograd.gradcheck(lambda v: loss(v, y), (x.requires_grad_(True),), atol=1e-6, fast_mode=True)


# ------------------------------------------------------------------------------------------ active boundary loss
def authors_threshold(strength: np.ndarray, limit: int) -> float:
    """The authors' loop: raise ε by 1.2 from 1e-5 until at most ``limit`` values are above it."""
    eps = 1e-5
    while (strength > eps).sum() > limit:
        eps *= 1.2
    return eps


def test_active_boundary_threshold_is_the_authors_loop():
    g = torch.Generator().manual_seed(7)
    strength = torch.rand(3, 400, generator=g, dtype=torch.float64) ** 6 * 3
    strength[2] = 0  # nothing above the base ε
    limit = torch.tensor([4, 37, 4])
    ours = ActiveBoundaryLoss.boundary_threshold(strength, limit)
    for b in range(3):
        expected = authors_threshold(strength[b].numpy(), int(limit[b]))
        assert math.isclose(float(ours[b]), expected, rel_tol=1e-9)
        assert int((strength[b] > ours[b]).sum()) <= limit[b]


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
def test_active_boundary_predicted_boundary_matches_recomputation(spatial):
    x, _ = batch(spatial, seed=8)
    loss = ActiveBoundaryLoss(max_boundary_ratio=0.1)
    ours = loss.predicted_boundary(torch.log_softmax(x, 1), None)
    probs = torch.softmax(x, 1).numpy()
    for b in range(2):
        strength = np.zeros(spatial)
        for index in np.ndindex(*spatial):
            for axis in range(len(spatial)):
                ahead = list(index)
                ahead[axis] += 1
                if ahead[axis] < spatial[axis]:
                    p, q = probs[(b, slice(None), *index)], probs[(b, slice(None), *ahead)]
                    strength[index] += float((p * np.log(p / q)).sum())
        limit = int(0.1 * strength.size)
        seeds = strength > authors_threshold(strength, limit)
        expected = ndimage.binary_dilation(seeds, structure=np.ones((3,) * len(spatial)))
        assert (ours[b].numpy() == expected).all()


def test_active_boundary_hand_worked():
    # 3x5 patch, 2 classes. Target: class 0 in columns 0-2, class 1 in columns 3-4.
    # Prediction: p = (.9, .1) in columns 0-1, (.1, .9) in columns 2-4: the predicted boundary is one column left.
    # Seeds: KL(p_x || p_right) = .8 ln 9 =: K > 1e-5 only in column 1 (3 voxels <= 20 % of 15); dilated: columns 0-2.
    # Distance to the target boundary layer (signed map of the own class): columns 0..4 -> 2, 1, 0, 0, 1.
    # Column 2 (D = 0) has no closer neighbour: left out. Column 0 (D = 2): all its neighbours predict the same,
    # every direction logit KL(p_n || p_x) is 0, CE = ln 8, weight 2/20. Column 1 (D = 1, weight 1/20): target is a
    # column-2 neighbour (D = 0); logits K towards column 2 (3 neighbours in the middle row, 2 in the edge rows,
    # the third outside the patch), 0 elsewhere. Torch's label smoothing 0.2 over 8 directions:
    # CE = .8 (ln Z - K) + .2 (ln Z - n K / 8), Z = n e^K + (8 - n).
    probs = torch.tensor([0.9, 0.9, 0.1, 0.1, 0.1], dtype=torch.float64)
    x = torch.stack([probs, 1 - probs]).log().view(1, 2, 1, 5).expand(1, 2, 3, 5)
    y = torch.tensor([0, 0, 0, 1, 1]).view(1, 1, 1, 5).expand(1, 1, 3, 5)
    big_k = 0.8 * math.log(9)

    def smoothed_ce(n: int) -> float:
        log_z = math.log(n * math.exp(big_k) + 8 - n)
        return 0.8 * (log_z - big_k) + 0.2 * (log_z - n * big_k / 8)

    expected = (3 * 0.1 * math.log(8) + (smoothed_ce(3) + 2 * smoothed_ce(2)) / 20) / 6
    loss = ActiveBoundaryLoss(max_boundary_ratio=0.2)(x, y)
    assert math.isclose(float(loss), expected, rel_tol=1e-9)
    per_voxel = ActiveBoundaryLoss(max_boundary_ratio=0.2, reduction="none")(x, y)
    assert per_voxel.shape == (1, 3, 5) and (per_voxel[..., 2:] == 0).all()
    assert math.isclose(float(per_voxel.sum()), 6 * expected, rel_tol=1e-9)


def test_active_boundary_returns_zero_connected_to_the_input_without_boundary():
    x, y = batch((6, 6))
    x.requires_grad_(True)
    loss = ActiveBoundaryLoss()(x, y)  # 1 % of 36 voxels: no voxel may be a boundary seed
    assert loss is not None and loss.item() == 0
    loss.backward()
    assert (x.grad == 0).all()


def test_active_boundary_perfect_prediction_is_not_its_minimum():
    # an 8x8 patch split in two halves: inside the boundary band a perfect prediction is flat, so the direction CE
    # is ln 8 at every voxel with D > 0; a prediction that changes gradually across the boundary scores lower
    y = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    y[..., 4:] = 1
    perfect = 12.0 * (2 * one_hot(y, 2) - 1)
    ramp = 2 * (torch.arange(8, dtype=torch.float64) - 3.5)
    gradual = torch.stack([-ramp, ramp]).view(1, 2, 1, 8).expand(1, 2, 8, 8)
    loss = ActiveBoundaryLoss(max_boundary_ratio=0.25)
    assert loss(gradual, y) < loss(perfect, y)


def compact_labels(spatial, seed: int) -> torch.Tensor:
    """Random labels with a compact class-1 half, so that some voxels lie off the boundary (D > 0)."""
    _, y = batch(spatial, seed=seed)
    y[:, :, : spatial[0] // 2] = 1
    return y


def test_active_boundary_gradcheck_3d_with_ignored_voxels():
    x, _ = batch((4, 4, 3), seed=9)
    y = with_ignored(compact_labels((4, 4, 3), seed=9))
    loss = ActiveBoundaryLoss(max_boundary_ratio=0.3, ignore_index=IGNORE, detach_neighbours=False)
    assert loss(x, y) > 0
    assert torch.autograd.gradcheck(lambda v: loss(v, y), (x.requires_grad_(True),), atol=1e-6, fast_mode=True)


def test_active_boundary_gradient_reaches_only_boundary_voxels_with_detached_neighbours():
    x, _ = batch((8, 7), seed=9)
    y = compact_labels((8, 7), seed=9)
    loss = ActiveBoundaryLoss(max_boundary_ratio=0.3)
    x.requires_grad_(True)
    per_voxel = ActiveBoundaryLoss(max_boundary_ratio=0.3, reduction="none")(x, y)
    (grad,) = torch.autograd.grad(loss(x, y), x)
    learnt = per_voxel != 0
    assert learnt.any() and (grad.abs().sum(1)[~learnt] == 0).all() and (grad.abs().sum(1)[learnt] > 0).all()


def test_active_boundary_rejects_single_channel_input():
    with pytest.raises(ValueError, match="C >= 2"):
        ActiveBoundaryLoss()(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))


# --------------------------------------------------------------------------------------------- boundary DoU loss
def dou_recomputation(probs: np.ndarray, onehot: np.ndarray, batch_sums: bool, alpha_max=0.8, s=1e-5) -> float:
    """The authors' recipe with plain loops: boundary voxels have a face neighbour outside (zero padding)."""
    losses = []
    items = [slice(None)] if batch_sums else [slice(b, b + 1) for b in range(probs.shape[0])]
    for item in items:
        for c in range(probs.shape[1]):
            p, g = probs[item, c], onehot[item, c]
            padded = np.pad(g, [(0, 0)] + [(1, 1)] * (g.ndim - 1))
            boundary = 0
            for index in zip(*np.nonzero(g), strict=True):
                for axis in range(1, g.ndim):
                    for step in (-1, 1):
                        near = [i + 1 for i in index]
                        near[0] -= 1
                        near[axis] += step
                        if padded[tuple(near)] == 0:
                            boundary += 1
                            break
                    else:
                        continue
                    break
            alpha = min(1 - 2 * (boundary + s) / (g.sum() + s), alpha_max)
            i, squares = (p * g).sum(), (p * p).sum() + (g * g).sum()
            losses.append((squares - 2 * i + s) / (squares - (1 + alpha) * i + s))
    return float(np.mean(losses))


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("batch_sums", [False, True], ids=["per_item", "batch"])
def test_boundary_dou_matches_plain_recomputation(spatial, batch_sums):
    x, _ = batch(spatial)
    y = torch.zeros(2, 1, *spatial, dtype=torch.long)  # compact blocks: some voxels off the boundary
    y[0, 0, 1:5, 1:4] = 1
    y[1, 0, 2:, :3] = 2
    ours = BoundaryDoULoss(softmax=True, batch=batch_sums)(x, y)
    expected = dou_recomputation(torch.softmax(x, 1).numpy(), one_hot(y, 3).numpy(), batch_sums)
    assert math.isclose(float(ours), expected, rel_tol=1e-9)


def test_boundary_dou_multi_label_target_matches_plain_recomputation():
    x, _ = batch((6, 7), seed=15)
    g = torch.Generator().manual_seed(16)
    target = (torch.rand(x.shape, generator=g) > 0.4).double()  # overlapping channels: each its own region
    ours = BoundaryDoULoss(sigmoid=True)(x, target)
    expected = dou_recomputation(torch.sigmoid(x).numpy(), target.numpy(), batch_sums=False)
    assert math.isclose(float(ours), expected, rel_tol=1e-9)


@pytest.mark.parametrize("size, alpha", [(8, 0.125), (40, 0.8)], ids=["alpha", "alpha_capped"])
def test_boundary_dou_hand_worked(size, alpha):
    # one class fills an n x n patch (class 0 absent), p = .5 everywhere.
    # Boundary (patch edge counts as outside): 4n - 4 voxels. alpha = 1 - 2 (4n - 4) / n^2: 8 -> 1 - 56/64 = .125;
    # 40 -> 1 - 312/1600 = .805, capped at .8.
    # class 1: sum p^2 = n^2/4, sum g^2 = n^2, I = n^2/2: (n^2/4 + n^2 - n^2) / (5n^2/4 - (1 + a) n^2/2)
    #   = .25 / (1.25 - .5 (1 + a)); class 0 (absent): alpha = -1, I = 0: numerator = denominator, loss 1
    y = torch.ones(1, 1, size, size, dtype=torch.long)
    x = torch.full((1, 2, size, size), 0.5, dtype=torch.float64)
    per_class = BoundaryDoULoss(reduction="none")(x, y).flatten()
    assert torch.isclose(per_class[1], torch.tensor(0.25 / (1.25 - 0.5 * (1 + alpha)), dtype=torch.float64))
    assert per_class[0] == 1


def test_boundary_dou_without_numerator_smoothing_penalises_false_positives_of_absent_classes():
    y = torch.ones(1, 1, 6, 6, dtype=torch.long)
    x = torch.stack([torch.full((6, 6), p) for p in (0.3, 0.7)]).unsqueeze(0).double()
    loss = BoundaryDoULoss(reduction="none", smooth_nr=0.0)(x, y).flatten()
    # class 0 absent: sum p^2 / (sum p^2 + 1e-5) with sum p^2 = 36 * .09
    assert torch.isclose(loss[0], torch.tensor(3.24 / (3.24 + 1e-5), dtype=torch.float64))


# ------------------------------------------------------------------------------------------------- shape-aware
def test_shape_aware_hand_worked():
    # 1x6 row. Target 0 0 0 1 1 1; prediction (argmax) 0 0 1 1 1 1: one voxel too much of class 1.
    # Predicted contours (a face neighbour predicted otherwise; the patch edge is not a contour): voxel 1 (class 0)
    # and voxel 2 (class 1). Signed maps: class 0 [-2 -1 0 1 2 3], class 1 [3 2 1 0 -1 -2].
    # E = |phi_0(1)| = 1 at voxel 1, |phi_1(2)| = 1 at voxel 2 -> weights [1 2 2 1 1 1].
    logits = torch.tensor([[2.0, 1.0, -0.5, -1.0, -2.0, -1.5], [0.0, 0.5, 0.5, 1.0, 0.0, 0.5]], dtype=torch.float64)
    labels = [0, 0, 0, 1, 1, 1]
    x, y = logits.view(1, 2, 1, 6), row_labels(labels)
    weights = [1, 2, 2, 1, 1, 1]
    ce = [-torch.log_softmax(logits[:, i], 0)[labels[i]] for i in range(6)]
    expected = sum(w * c for w, c in zip(weights, ce, strict=True)) / 6
    assert torch.isclose(ShapeAwareLoss()(x, y), expected)


def test_shape_aware_binary_single_channel_hand_worked():
    # one sigmoid channel: target 0 0 0 1 1 1, prediction (x > 0) 0 0 1 1 1 1. Only the predicted foreground has a
    # contour: voxel 2 (voxel 1 is predicted background). Class-1 signed map [3 2 1 0 -1 -2]: E = 1 at voxel 2.
    logits = torch.tensor([-2.0, -1.0, 0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    labels = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    expected = (bce * torch.tensor([1.0, 1, 2, 1, 1, 1], dtype=torch.float64)).mean()
    assert torch.isclose(ShapeAwareLoss()(logits.view(1, 1, 1, 6), row_labels([0, 0, 0, 1, 1, 1])), expected)


def test_shape_aware_is_cross_entropy_where_prediction_contours_lie_on_the_target():
    x, y = batch((6, 6), seed=10)
    exact = 5.0 * (2 * one_hot(y, 3) - 1) + 0.1 * x  # argmax is the target: contours coincide, E = 0
    expected = torch.nn.functional.cross_entropy(exact, y[:, 0])
    assert torch.isclose(ShapeAwareLoss()(exact, y), expected)


def test_shape_aware_class_without_target_boundary_adds_no_weight():
    y = torch.zeros(1, 1, 5, 5, dtype=torch.long)  # only class 0: class 0 full, class 1 absent
    x = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    x[0, 1, 1:4, 1:4] = 2.0  # a predicted class-1 blob with a contour
    expected = torch.nn.functional.cross_entropy(x, y[:, 0])
    assert torch.isclose(ShapeAwareLoss()(x, y), expected)


# ------------------------------------------------------------------------------------------- U-Net weighted CE
def test_unet_weighted_ce_is_the_weighted_mean_of_cross_entropy():
    x, y = batch((5, 6), seed=11)
    g = torch.Generator().manual_seed(12)
    weight = 1 + 10 * torch.rand(2, 1, 5, 6, generator=g, dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(x, y[:, 0], reduction="none")
    assert torch.isclose(UNetWeightedCELoss()(x, y, weight=weight), (weight[:, 0] * ce).mean())
    per_class = weight.expand(2, 3, 5, 6) * torch.arange(1, 4).view(1, 3, 1, 1)  # read at the true class
    true_class_weight = per_class.gather(1, y)[:, 0]
    assert torch.isclose(UNetWeightedCELoss()(x, y, weight=per_class), (true_class_weight * ce).mean())


def test_unet_weighted_ce_on_the_fly_uses_w0_and_sigma():
    y = torch.zeros(1, 1, 9, 9, dtype=torch.long)
    y[0, 0, 1:4, 1:4] = 1
    y[0, 0, 1:4, 6:8] = 1  # two objects two voxels apart
    x, _ = batch((9, 9), classes=2)
    x = x[:1]
    loss = UNetWeightedCELoss(w0=3.0, sigma=2.0, class_balance=False)
    weight = distance_maps(one_hot(y, 2), "unet_weight", w0=3.0, sigma=2.0, class_balance=False)
    assert weight.max() > 1  # the border term is there
    assert torch.isclose(loss(x, y), loss(x, y, weight=weight.double()))


# --------------------------------------------------------------------- cached maps against the on-the-fly path
MAP_LOSSES = {
    "boundary": ("dist", "signed", {"softmax": True}),
    "region_wise": ("dist", "rrw", {"softmax": True}),
    "hausdorff_dt": ("dist", "unsigned", {"softmax": True}),
    "active_boundary": ("dist", "signed", {"max_boundary_ratio": 0.3}),
    "shape_aware": ("dist", "signed", {}),
    "unet_weighted_ce": ("weight", "unet_weight", {}),
}


def cached_maps(y: torch.Tensor, mode: str, key: str, spacing, ignore_index=None) -> torch.Tensor:
    """Maps as the pipeline makes them: DistanceMapd per item, then collated."""
    transform = DistanceMapd(
        "label", mode=mode, num_classes=3, output_key=key, spacing=spacing, ignore_index=ignore_index
    )
    return torch.stack([transform({"label": item})[key] for item in y])


@pytest.mark.parametrize("name", sorted(MAP_LOSSES))
@pytest.mark.parametrize("spatial, spacing", [((8, 7), (1.5, 0.7)), ((5, 6, 4), (2.0, 1.0, 0.8))], ids=SPATIAL_IDS)
@pytest.mark.parametrize("ignore", [False, True], ids=["all", "ignore"])
def test_cached_map_gives_the_on_the_fly_value(name, spatial, spacing, ignore):
    key, mode, kwargs = MAP_LOSSES[name]
    x, y = batch(spatial, seed=13)
    y[:, :, : spatial[0] // 2] = 1  # a compact region, so that maps have voxels off the boundary
    ignore_index = IGNORE if ignore else None
    if ignore:
        y = with_ignored(y)
    loss = get_loss(name, spacing=spacing, ignore_index=ignore_index, **kwargs)
    on_the_fly = loss(x, y)
    cached = loss(x, y, **{key: cached_maps(y, mode, key, spacing, ignore_index)})
    assert torch.isfinite(on_the_fly) and on_the_fly != 0
    assert torch.allclose(cached, on_the_fly, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------------- edge cases, bad maps
ALL = {
    "boundary": {"softmax": True},
    "region_wise": {"softmax": True},
    "hausdorff_dt": {"softmax": True},
    "hausdorff_er": {"softmax": True},
    "active_boundary": {"max_boundary_ratio": 0.3},
    "boundary_dou": {"softmax": True},
    "shape_aware": {},
    "unet_weighted_ce": {},
}


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("fill", [0, 2], ids=["background_only", "last_class_only"])
def test_full_and_absent_classes_are_finite(name, spatial, fill):
    x, _ = batch(spatial)
    y = torch.full((2, 1, *spatial), fill, dtype=torch.long)
    x.requires_grad_(True)
    value = get_loss(name, **ALL[name])(x, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", sorted(MAP_LOSSES))
def test_missing_map_raises_when_on_the_fly_is_off(name):
    _, mode, kwargs = MAP_LOSSES[name]
    x, y = batch()
    with pytest.raises(ValueError, match=f"DistanceMapd.*{mode}"):
        get_loss(name, compute_missing_map=False, **kwargs)(x, y)


@pytest.mark.parametrize("name", sorted(MAP_LOSSES))
def test_map_of_the_wrong_shape_raises(name):
    key, mode, kwargs = MAP_LOSSES[name]
    x, y = batch()
    good = distance_maps(one_hot(y, 3), mode)
    loss = get_loss(name, **kwargs)
    for bad in (good[..., :-1], good[:1], good.flatten(2), torch.cat([good, good], 1)[:, :5]):
        with pytest.raises(ValueError, match="shape"):
            loss(x, y, **{key: bad})


@pytest.mark.parametrize("name", ["hausdorff_dt", "region_wise"])
def test_map_of_another_mode_raises(name):
    key, mode, kwargs = MAP_LOSSES[name]
    x, y = batch()
    signed = distance_maps(one_hot(y, 3), "signed")  # negative inside, and beyond 1: not unsigned, not rrw
    with pytest.raises(ValueError, match=f"mode '{mode}'"):
        get_loss(name, **kwargs)(x, y, **{key: signed})


def test_map_with_nan_raises():
    x, y = batch()
    dist = distance_maps(one_hot(y, 3), "signed")
    dist[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        BoundaryLoss(softmax=True)(x, y, dist=dist)


def test_map_of_all_classes_is_narrowed_to_the_kept_classes():
    x, y = batch(seed=14)
    dist = distance_maps(one_hot(y, 3), "signed")
    loss = BoundaryLoss(softmax=True, include_background=False)
    assert torch.allclose(loss(x, y, dist=dist), loss(x, y, dist=dist[:, 1:]))


@pytest.mark.parametrize("bad", [0, -1.0, [1.0, float("inf")]])
def test_bad_spacing_raises(bad):
    with pytest.raises(ValueError, match="spacing"):
        BoundaryLoss(spacing=bad)
