"""The prediction-side work of the boundary losses (medseg/losses/_prediction_maps.py): the channel argmax against
torch's, the thresholded prediction's squared two-sided distances against scipy class by class (both edt paths:
two-label pass and cropped box; the distance_maps fallback), the distance-weighted squared error against its dense
formula and gradcheck, and HausdorffDTLoss against the dense formula with scipy maps."""

from __future__ import annotations

import edt
import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.losses import HausdorffDTLoss
from medseg.losses._prediction_maps import channel_argmax, prediction_distances_squared, weighted_squared_error
from medseg.transforms._cropped_edt import worth_cropping

IGNORE = 255


def two_sided_squared(mask: np.ndarray, spacing) -> np.ndarray:
    """scipy, one class: squared distance to the nearest voxel on the other side of its boundary; 0 without one."""
    if mask.all() or not mask.any():
        return np.zeros(mask.shape)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return (inside + outside) ** 2


def reference(predicted: torch.Tensor, spacings) -> np.ndarray:
    masks = predicted.numpy()
    return np.stack([np.stack([two_sided_squared(m, spacings[b]) for m in masks[b]]) for b in range(masks.shape[0])])


def exclusive_prediction(spatial, classes=4, seed=0) -> torch.Tensor:
    """(2, C, *spatial) disjoint boolean masks: item 0 scattered voxels of every class, one class in a small corner
    box (the cropped path), one empty; item 1 one class filling everything."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes + 2, (2, *spatial), generator=g)  # values >= classes: no class
    labels[0][labels[0] == 2] = classes  # class 2: only the corner box below
    corner = tuple(slice(1, 4) for _ in spatial)
    labels[0][corner] = torch.where(torch.rand(labels[0][corner].shape, generator=g) < 0.6, 2, classes)
    labels[0][labels[0] == 3] = classes  # class 3: empty in item 0
    labels[1] = 1
    return torch.nn.functional.one_hot(labels, classes + 2)[..., :classes].movedim(-1, 1).bool()


@pytest.mark.parametrize(
    "spatial, spacing", [((40, 36), (1.0, 1.0)), ((24, 20, 18), (2.0, 0.7, 1.3))], ids=["2d", "3d"]
)
def test_exclusive_prediction_matches_scipy_per_class(spatial, spacing):
    predicted = exclusive_prediction(spatial)
    assert worth_cropping(ndimage.find_objects(predicted[0, 2].numpy().astype(np.uint8))[0], spatial)
    ours = prediction_distances_squared(predicted, spacing, None, "auto")
    assert ours.dtype == torch.float32 and ours.shape == predicted.shape
    np.testing.assert_allclose(ours.numpy(), reference(predicted, [spacing] * 2), rtol=1e-5, atol=1e-4)


def test_per_item_spacing_rows():
    predicted = exclusive_prediction((30, 28), seed=1)
    rows = torch.tensor([[1.0, 2.0], [0.5, 1.5]], dtype=torch.float64)
    ours = prediction_distances_squared(predicted, rows, None, "edt")
    np.testing.assert_allclose(ours.numpy(), reference(predicted, rows.tolist()), rtol=1e-5, atol=1e-4)


def test_one_edt_pass_per_class_with_a_boundary(monkeypatch):
    """The benchmark's case (every class scattered over the item): one two-label pass per class that has a
    boundary, nothing for empty or full classes, and no separate inside pass."""
    calls = []
    for name in ("edt", "edtsq"):
        original = getattr(edt, name)
        monkeypatch.setattr(edt, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, (2, 32, 32), generator=g)
    labels[1] = 4  # item 1: class 4 everywhere -> classes 0..3 empty, none full among the kept ones below
    predicted = torch.nn.functional.one_hot(labels, 5)[..., :4].movedim(-1, 1).bool()
    prediction_distances_squared(predicted, None, None, "auto")
    assert calls == ["edtsq"] * 4


@pytest.mark.parametrize("case", ["overlapping", "ignored", "scipy_backend"])
def test_other_cases_take_distance_maps_and_match_scipy(case):
    g = torch.Generator().manual_seed(3)
    predicted = torch.rand(2, 3, 12, 11, generator=g) < 0.4  # channels overlap (sigmoid thresholded)
    mask, backend = None, "auto"
    if case == "ignored":
        predicted = exclusive_prediction((12, 11), classes=3, seed=3)
        mask = torch.ones(2, 1, 12, 11)
        mask[:, :, :3] = 0
    elif case == "scipy_backend":
        predicted = exclusive_prediction((12, 11), classes=3, seed=3)
        backend = "scipy"
    ours = prediction_distances_squared(predicted, (1.5, 1.0), mask, backend)
    if mask is None:
        expected = reference(predicted, [(1.5, 1.0)] * 2)
    else:  # ignored voxels bound no region and get 0: scipy on the known voxels' grid rows 3..
        expected = np.zeros(predicted.shape)
        expected[..., 3:, :] = reference(predicted[..., 3:, :], [(1.5, 1.0)] * 2)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_empty_prediction_is_zero():
    predicted = torch.zeros(2, 3, 9, 8, 7, dtype=torch.bool)
    assert not prediction_distances_squared(predicted, None, None, "auto").any()


@pytest.mark.parametrize("classes, spatial", [(5, (3, 17, 13)), (14, (2, 6, 5, 7)), (300, (1, 4, 3))])
def test_channel_argmax_is_torch_argmax(classes, spatial):
    g = torch.Generator().manual_seed(classes)
    values = torch.randint(-3, 3, (spatial[0], classes, *spatial[1:]), generator=g).float()  # many ties
    values[0, :, 0] = float("-inf")
    values[0, 2 % classes, 1] = float("inf")
    assert torch.equal(channel_argmax(values), values.argmax(1))


def test_channel_argmax_with_nan_stays_in_range():
    values = torch.zeros(1, 4, 3, 3)
    values[0, :, 1, 1] = float("nan")
    result = channel_argmax(values)
    assert int(result.max()) <= 3 and int(result[0, 0, 0]) == 0


@pytest.mark.parametrize("first", [0, 1])
def test_weighted_squared_error_is_the_dense_formula_and_passes_gradcheck(first):
    g = torch.Generator().manual_seed(4)
    probs = torch.rand(2, 3, 5, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(2, 3 - first, 5, 4, 3, generator=g) > 0.5).double()
    weight = torch.rand(2, 3 - first, 5, 4, 3, generator=g, dtype=torch.float64) * 10
    expected = ((probs[:, first:] - target) ** 2 * weight).sum((2, 3, 4))
    assert torch.allclose(weighted_squared_error(probs, target, weight, first), expected, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda p: weighted_squared_error(p, target, weight, first), (probs,))


@pytest.mark.parametrize("spatial", [(14, 12), (8, 9, 7)], ids=["2d", "3d"])
@pytest.mark.parametrize("alpha", [2.0, 1.5])
@pytest.mark.parametrize("ignore", [False, True], ids=["all", "ignore"])
def test_hausdorff_dt_is_the_dense_formula_with_scipy_maps(spatial, alpha, ignore):
    """Value and gradient against the definition written densely: scipy two-sided maps of the target and of the
    softmax thresholded at 0.5, (p - g)^2 (d_p^α + d_g^α) averaged per item and class; ignored voxels: the
    target's map from the known voxels as the loss does it (rows 0..1 ignored, so scipy on the rest)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 3, (2, 1, *spatial), generator=g)
    y[:, :, : spatial[0] // 2] = 1
    if ignore:
        y[:, :, :2] = IGNORE
    x.requires_grad_(True)
    loss = HausdorffDTLoss(softmax=True, include_background=True, alpha=alpha, ignore_index=IGNORE if ignore else None)
    ours = loss(x, y)
    (grad_ours,) = torch.autograd.grad(ours, x)

    known = slice(2, None) if ignore else slice(None)
    probs = torch.softmax(x, 1)[:, :, known]
    onehot = torch.nn.functional.one_hot(y[:, 0, known].clamp(max=2), 3).movedim(-1, 1).double()
    ones = [(1.0,) * len(spatial)] * 2
    d_p = torch.from_numpy(reference(probs.detach() > 0.5, ones)) ** (alpha / 2)
    d_g = torch.from_numpy(reference(onehot > 0, ones)) ** (alpha / 2)
    expected = ((probs - onehot) ** 2 * (d_p + d_g)).flatten(2).sum(2) / probs[0, 0].numel()
    expected = expected.mean()
    (grad_expected,) = torch.autograd.grad(expected, x)
    assert torch.allclose(ours, expected, rtol=1e-6)
    assert torch.allclose(grad_ours, grad_expected, rtol=1e-6, atol=1e-9)
