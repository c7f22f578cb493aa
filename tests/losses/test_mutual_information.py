"""Region mutual information loss against a plain numpy re-computation (explicit loops, np.linalg) and a hand case."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from medseg.losses import RegionMutualInformationLoss

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
