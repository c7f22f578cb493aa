"""Region mutual information loss against a plain numpy re-computation (explicit loops, np.linalg), a hand case,
and the previous dense torch formula (values, gradients, gradcheck) for the fast path; its peak memory."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional

from medseg.losses import RegionMutualInformationLoss
from medseg.losses.mutual_information import _label_index, _pooled_one_hot, neighbourhood_vectors

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_losses

ALPHA = 5e-4


def numpy_avg_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Average pooling of one map, kernel = stride = size, zero padding size // 2 counted in the mean."""
    pad = size // 2
    padded = np.pad(x, pad)
    out_shape = [(n + 2 * pad - size) // size + 1 for n in x.shape]
    out = np.zeros(out_shape)
    for index in itertools.product(*(range(n) for n in out_shape)):
        window = tuple(slice(i * size, i * size + size) for i in index)
        out[index] = padded[window].sum() / size ** len(index)
    return out


def numpy_rmi(prob: np.ndarray, label: np.ndarray, radius: int, alpha: float = ALPHA) -> float:
    """RMI term of one image and class: 1/(2D) log det(Σ_Y − Σ_YP (Σ_P + αI)^-1 Σ_PY + αI), sums over positions."""
    positions = itertools.product(*(range(n - radius + 1) for n in prob.shape))
    y_points, p_points = [], []
    for position in positions:
        offsets = itertools.product(range(radius), repeat=prob.ndim)
        neighbours = [tuple(p + o for p, o in zip(position, offset, strict=True)) for offset in offsets]
        y_points.append([label[n] for n in neighbours])
        p_points.append([prob[n] for n in neighbours])
    y = np.array(y_points).T  # (D, M)
    p = np.array(p_points).T
    y = y - y.mean(1, keepdims=True)
    p = p - p.mean(1, keepdims=True)
    dim = y.shape[0]
    eye = np.eye(dim)
    posterior = y @ y.T - (y @ p.T) @ np.linalg.inv(p @ p.T + alpha * eye) @ (p @ y.T)
    sign, log_det = np.linalg.slogdet(posterior + alpha * eye)
    assert sign > 0
    return 0.5 * log_det / dim


def numpy_rmi_terms(logits, labels, radius, pool_size, ignore_index=None) -> np.ndarray:
    """(B, C) RMI terms: sigmoid, one-hot, ignored voxels zeroed in both maps, pooled, then numpy_rmi."""
    x = logits.detach().double().numpy()
    lab = labels[:, 0].numpy()
    probs = 1 / (1 + np.exp(-x))
    keep = np.ones_like(lab, dtype=bool) if ignore_index is None else lab != ignore_index
    terms = np.zeros(x.shape[:2])
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        prob = probs[b, c] * keep[b]
        label = ((lab[b] == c) & keep[b]).astype(float)
        if pool_size > 1:
            prob, label = numpy_avg_pool(prob, pool_size), numpy_avg_pool(label, pool_size)
        terms[b, c] = numpy_rmi(prob, label, radius)
    return terms


def rmi_only(**kwargs) -> RegionMutualInformationLoss:
    return RegionMutualInformationLoss(bce_weight=0.0, reduction="none", **kwargs)


@pytest.mark.parametrize(
    "spatial,radius,pool_size",
    [((9, 10), 3, 2), ((16, 13), 3, 4), ((5, 6, 7), 3, 1), ((6, 7, 8), 2, 2)],
    ids=["2d-pool2", "2d-defaults", "3d-r3", "3d-r2-pool2"],
)
def test_rmi_term_matches_numpy(spatial, radius, pool_size):
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(2, 2, *spatial, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, 1, *spatial), generator=g)
    ours = rmi_only(radius=radius, pool_size=pool_size)(logits, labels).flatten(2)[..., 0]
    expected = numpy_rmi_terms(logits, labels, radius, pool_size)
    assert np.allclose(ours.numpy(), expected, atol=1e-8, rtol=1e-8)


def test_hand_worked_radius_one():
    # 2x2 image, label [[1, 0], [0, 1]], logits ±ln 3 -> p = [[0.75, 0.25], [0.25, 0.75]], R = 1 (D = 1), no pooling
    # centred y = ±0.5 -> Σ_Y = 4 * 0.25 = 1; centred p = ±0.25 -> Σ_P = 0.25; Σ_YP = 4 * 0.125 = 0.5
    # posterior = 1 - 0.5² / (0.25 + α) = 1 - 0.25 / 0.2505 = 0.0019960...; RMI = ½ ln(0.0019960 + α) = -2.99653
    # BCE = -ln 0.75 at every voxel = 0.287682; loss = ½ BCE + ½ RMI = -1.354424
    t = math.log(3)
    logits = torch.tensor([[t, -t], [-t, t]], dtype=torch.float64).view(1, 1, 2, 2)
    labels = torch.tensor([[1, 0], [0, 1]]).view(1, 1, 2, 2)
    rmi = 0.5 * math.log(1 - 0.25 / (0.25 + ALPHA) + ALPHA)
    bce = -math.log(0.75)
    assert abs(rmi - -2.99653) < 1e-5
    loss = RegionMutualInformationLoss(radius=1, pool_size=1)(logits, labels)
    assert abs(loss.item() - (0.5 * bce + 0.5 * rmi)) < 1e-12


def test_bce_weight_one_is_torch_bce():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
    target = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).double()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(RegionMutualInformationLoss(bce_weight=1.0, pool_size=1)(logits, labels), expected)


def test_full_loss_mixes_bce_and_rmi():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 2, 12, 12, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, 1, 12, 12), generator=g)
    target = torch.nn.functional.one_hot(labels[:, 0], 2).movedim(-1, 1).double()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target).item()
    rmi = numpy_rmi_terms(logits, labels, radius=3, pool_size=2).mean()
    loss = RegionMutualInformationLoss(bce_weight=0.3, pool_size=2)(logits, labels)
    assert abs(loss.item() - (0.3 * bce + 0.7 * rmi)) < 1e-8


def test_absent_class_scores_half_log_alpha_without_gradient():
    # centred labels of an absent class are 0: posterior = 0, so RMI = ½ log det(αI) / D = ½ log α = -3.8004
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 9, 9, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 2, (2, 1, 9, 9), generator=g)  # class 2 absent
    terms = rmi_only(pool_size=1)(logits, labels).flatten(1)
    assert torch.allclose(terms[:, 2].detach(), torch.full((2,), 0.5 * math.log(ALPHA), dtype=torch.float64))
    assert torch.all(terms[:, :2] > 0.5 * math.log(ALPHA))  # the lower bound of every term
    terms[:, 2].sum().backward()
    assert torch.all(logits.grad.abs() < 1e-12)


def test_ignored_voxels_are_zero_in_both_maps():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 2, 10, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, 1, 10, 9), generator=g)
    labels[0, 0, :3] = 255
    labels[1, 0, :, -2:] = 255
    ours = rmi_only(pool_size=2, ignore_index=255)(logits, labels).flatten(2)[..., 0]
    expected = numpy_rmi_terms(logits, labels, radius=3, pool_size=2, ignore_index=255)
    assert np.allclose(ours.numpy(), expected, atol=1e-8, rtol=1e-8)
    # BCE counts only the kept voxels
    keep = labels[:, 0] != 255
    target = torch.nn.functional.one_hot(labels[:, 0].clamp(max=1), 2).movedim(-1, 1).double()
    voxel_bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected_bce = torch.stack([voxel_bce[b][:, keep[b]].mean(1) for b in range(2)])
    bce = RegionMutualInformationLoss(bce_weight=1.0, reduction="none", ignore_index=255)(logits, labels)
    assert torch.allclose(bce.flatten(1), expected_bce)


def test_float32_input_gives_float32_loss_computed_in_float64():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 2, 16, 16, generator=g)
    labels = torch.randint(0, 2, (1, 1, 16, 16), generator=g)
    low = RegionMutualInformationLoss()(logits, labels)
    high = RegionMutualInformationLoss()(logits.double(), labels)
    assert low.dtype == torch.float32 and abs(low.item() - high.item()) < 1e-5


def test_bad_arguments_raise():
    logits, labels = torch.randn(1, 2, 6, 6), torch.randint(0, 2, (1, 1, 6, 6))
    with pytest.raises(ValueError, match="smaller than the neighbourhood"):
        RegionMutualInformationLoss()(logits, labels)  # 6x6 pooled by 4 (padding 2) is 2x2, less than R=3
    for kwargs in ({"radius": 0}, {"bce_weight": 1.5}, {"pool": "median"}, {"pool_size": 0}, {"alpha": 0.0}):
        with pytest.raises(ValueError):
            RegionMutualInformationLoss(**kwargs)


# --- the fast path (custom autograd Functions, label-map target) against the previous dense formula ---------------


def dense_reference(logits, target, radius=3, pool="avg", pool_size=4, bce_weight=0.5, ignore_index=None, skip=0):
    """The loss as it was computed before the fast path, densely, per (B, C) term: one-hot target, sigmoid,
    torch's BCE with logits, pooled maps, neighbourhood vectors stacked slice by slice, centred, three products."""
    c = logits.shape[1]
    if (target.shape[1] == c and c > 1) or (target.is_floating_point() and ignore_index is None):
        onehot = target.to(logits.dtype)
        keep = torch.ones_like(onehot[:, :1])
        if ignore_index is not None:
            keep = (onehot.sum(1, keepdim=True) > 0).to(logits.dtype)
    else:
        labels = target[:, 0].long()
        keep = torch.ones_like(labels, dtype=logits.dtype)
        if ignore_index is not None:
            keep = (labels != ignore_index).to(logits.dtype)
            labels = torch.where(labels == ignore_index, 0, labels)
        onehot = labels.unsqueeze(1).to(logits.dtype) if c == 1 else functional.one_hot(labels, c).movedim(-1, 1)
        onehot, keep = onehot.to(logits.dtype), keep.unsqueeze(1)
    x, onehot = logits[:, skip:], onehot[:, skip:] * keep
    voxel_bce = functional.binary_cross_entropy_with_logits(x, onehot, reduction="none") * keep
    bce = voxel_bce.flatten(2).sum(-1) / keep.flatten(1).sum(1, keepdim=True).clamp_min(1)
    probs = torch.sigmoid(x) * keep
    ndim = x.ndim - 2
    if pool_size > 1:
        pool_fn = getattr(functional, f"{pool}_pool{ndim}d")
        probs, onehot = (pool_fn(m, pool_size, pool_size, pool_size // 2) for m in (probs, onehot))

    def vectors(m):
        valid = [n - radius + 1 for n in m.shape[2:]]
        offsets = itertools.product(range(radius), repeat=ndim)
        shifted = [m[(..., *(slice(o, o + n) for o, n in zip(off, valid, strict=True)))] for off in offsets]
        v = torch.stack(shifted, 2).flatten(3).double()
        return v - v.mean(-1, keepdim=True)

    y, p = vectors(onehot), vectors(probs)
    eye = ALPHA * torch.eye(y.shape[2], dtype=torch.float64)
    posterior = y @ y.mT - y @ p.mT @ torch.linalg.inv(p @ p.mT + eye) @ p @ y.mT
    rmi = 0.5 * torch.logdet(posterior + eye) / y.shape[2]
    return bce_weight * bce + (1 - bce_weight) * rmi.to(bce.dtype)


FAST_PATH_CASES = {
    "1d-ignore": ((2, 3, 41), {"ignore_index": 255}),
    "2d-labels": ((2, 3, 19, 18), {}),
    "2d-ignore": ((2, 3, 19, 18), {"ignore_index": 255}),
    "2d-no-background-ignore": ((2, 3, 19, 18), {"include_background": False, "ignore_index": 255}),
    "2d-max-pool": ((2, 3, 19, 18), {"pool": "max", "include_background": False}),
    "2d-pool3-tail": ((1, 2, 20, 17), {"pool_size": 3}),  # the last voxel of the first dim is in no window
    "2d-one-channel": ((2, 1, 19, 18), {"ignore_index": 255}),
    "2d-onehot": ((2, 3, 19, 18), {"onehot": True}),
    "2d-onehot-ignore": ((2, 3, 19, 18), {"onehot": True, "ignore_index": 7}),
    "3d-labels": ((2, 2, 11, 12, 13), {"pool_size": 2}),
    "3d-no-background-ignore": ((1, 3, 13, 12, 11), {"pool_size": 2, "include_background": False, "ignore_index": 9}),
    "3d-onehot-r2": ((1, 2, 9, 10, 8), {"pool_size": 1, "radius": 2, "onehot": True}),
}


def fast_path_batch(shape, onehot=False, ignore_index=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, c, *spatial = shape
    logits = (3 * torch.randn(shape, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, max(c, 2), (b, 1, *spatial), generator=g)
    labels[:, :, :2] = 0  # an empty foreground region in each image
    if onehot:
        target = functional.one_hot(labels[:, 0], max(c, 2)).movedim(-1, 1)[:, :c].to(dtype)
        if ignore_index is not None:
            target[0, :, -3:] = 0  # all-zero voxels: ignored under an out-of-range ignore_index
        return logits, target
    if ignore_index is not None:
        labels[0, 0, -3:] = ignore_index
    return logits, labels


@pytest.mark.parametrize("case", list(FAST_PATH_CASES))
def test_values_and_gradients_match_the_dense_formula(case):
    shape, kwargs = FAST_PATH_CASES[case]
    kwargs = dict(kwargs)
    onehot = kwargs.pop("onehot", False)
    logits, target = fast_path_batch(shape, onehot, kwargs.get("ignore_index"))
    loss = RegionMutualInformationLoss(reduction="none", **kwargs)
    ours = loss(logits, target).flatten(1)
    reference_kwargs = {k: v for k, v in kwargs.items() if k != "include_background"}
    skip = 0 if kwargs.get("include_background", True) else 1
    expected = dense_reference(logits, target, skip=skip, **reference_kwargs)
    assert torch.allclose(ours, expected, rtol=1e-10, atol=1e-11)
    weights = torch.linspace(0.5, 1.5, ours.numel(), dtype=ours.dtype).view_as(ours)  # distinct per-term gradients
    (grad,) = torch.autograd.grad((ours * weights).sum(), logits)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), logits)
    # the reference inverts Σ_P + αI explicitly (the loss uses Cholesky): agreement to ~1e-10 of the largest entry
    assert torch.allclose(grad, expected_grad, rtol=1e-7, atol=1e-8 * expected_grad.abs().max().item())


@pytest.mark.parametrize(
    "shape,kwargs",
    [
        ((1, 3, 6, 7), {"include_background": False, "ignore_index": 255}),
        ((1, 3, 6, 7), {"onehot": True, "ignore_index": 7}),
        ((1, 2, 4, 5, 4), {"radius": 2}),
    ],
    ids=["2d-labels", "2d-onehot", "3d"],
)
def test_gradcheck_and_gradgradcheck(shape, kwargs):
    kwargs = dict(kwargs)
    onehot = kwargs.pop("onehot", False)
    logits, target = fast_path_batch(shape, onehot, kwargs.get("ignore_index"))
    loss = RegionMutualInformationLoss(pool_size=2, **kwargs)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,))
    assert torch.autograd.gradgradcheck(lambda x: loss(x, target), (logits,))


def test_bce_of_confident_logits_keeps_float32_precision():
    # softplus(x) - x t would lose the small terms of confident voxels to cancellation (|x| = 20 in float32: all)
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 2, (2, 1, 16, 16), generator=g)
    magnitude = 8 + 40 * torch.rand(2, 2, 16, 16, generator=g, dtype=torch.float64)
    onehot = functional.one_hot(labels[:, 0], 2).movedim(-1, 1).double()
    logits = magnitude * (2 * onehot - 1)  # right and confident everywhere: BCE = log1p(exp(-|x|)), tiny
    logits[0, 0, 0, 0] *= -1  # and one voxel confidently wrong
    loss = RegionMutualInformationLoss(bce_weight=1.0, pool_size=1, reduction="none")
    expected = functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none").flatten(2).mean(-1)
    ours = loss(logits.float(), labels).flatten(1).double()
    assert torch.allclose(ours, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("spatial", [(23,), (19, 18), (9, 10, 7)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_pooled_label_counts_equal_pooling_the_one_hot_target(spatial, size, mode):
    g = torch.Generator().manual_seed(size)
    labels = torch.randint(0, 4, (2, *spatial), generator=g)
    mask = (torch.rand(2, 1, *spatial, generator=g) > 0.2).float()
    index, keep = _label_index(labels, mask, offset=1, dtype=torch.float32)  # channels 1..3, some voxels ignored
    onehot = functional.one_hot(labels, 4).movedim(-1, 1)[:, 1:].float() * mask
    pool = getattr(functional, f"{mode}_pool{len(spatial)}d")
    expected = pool(onehot, size, size, size // 2)
    assert torch.equal(_pooled_one_hot(index, keep, 3, size, mode, torch.float32), expected)


def test_neighbourhood_vectors_run_in_c_order():
    x = torch.arange(2 * 4 * 5, dtype=torch.float64).view(1, 2, 4, 5)
    vectors = neighbourhood_vectors(x, 2)  # (1, 2, 4 offsets, 3 * 4 positions)
    positions, offsets = itertools.product(range(3), range(4)), list(itertools.product(range(2), range(2)))
    for channel, (i, j), (a, b) in itertools.product(range(2), positions, offsets):
        assert vectors[0, channel, 2 * a + b, 4 * i + j] == x[0, channel, i + a, j + b]


@pytest.mark.parametrize("shape", [(2, 5, 96, 96), (1, 4, 32, 32, 32)], ids=["2d", "3d"])
def test_peak_memory_under_twice_cross_entropy(shape):
    # the dense formula held a one-hot target, both log-sigmoids and float64 neighbourhood copies: 3.2-3.8x CE
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g).requires_grad_()
    labels = bench_losses.blobby_labels(shape, g)
    ce = bench_losses.peak_extra_bytes(lambda x, y: functional.cross_entropy(x, y[:, 0]), logits, labels, {})
    ours = bench_losses.peak_extra_bytes(RegionMutualInformationLoss(), logits, labels, {})
    assert ours < 2 * ce
