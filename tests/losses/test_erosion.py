"""Hausdorff-ER's blocked erosions (medseg.losses._erosion) against the dense formula under plain autograd: values
and gradients in 2D and 3D, ignored voxels, blocks of one volume, ties at the min and max, early stop, and memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from medseg.losses import HausdorffERLoss, _erosion

IGNORE = 255


def dense_eroded(probs, target, mask, k, alpha):
    """The per-voxel Σ_k k^α e^(k) as one autograd graph over the whole batch (kornia's recipe with a zero-padded
    cross mean as a sum of shifted slices, every class at once)."""
    nd = probs.ndim - 2
    current = (probs - target) ** 2 if mask is None else (probs - target) ** 2 * mask
    total = torch.zeros_like(current)
    for depth in range(1, k + 1):
        padded = F.pad(current, [1, 1] * nd)
        spread = current
        for axis in range(nd):
            for start in (0, 2):
                spread = spread + _shifted(padded, axis, start, current.shape)
        spread = spread / (2 * nd + 1)
        eroded = (spread - 0.5).masked_fill(spread < 0.5, 0.0)
        if mask is not None:
            eroded = eroded * mask
        dims = list(range(2, probs.ndim))
        low = eroded.amin(dims, keepdim=True)
        span = eroded.amax(dims, keepdim=True) - low
        varies = span != 0
        eroded = torch.where(varies, (eroded - low) / torch.where(varies, span, 1.0), eroded)
        total = total + eroded * depth**alpha
        current = eroded
    return total


def _shifted(padded, axis, start, shape):
    """The slice of a 1-padded tensor shifted by ``start - 1`` along spatial ``axis``, centred on the others."""
    index = [slice(None), slice(None)] + [slice(1, 1 + n) for n in shape[2:]]
    index[2 + axis] = slice(start, start + shape[2 + axis])
    return padded[tuple(index)]


def dense_loss(x, y, reduction, ignore_index=None, include_background=True, k=10, alpha=2.0):
    prep = HausdorffERLoss(
        softmax=True, ignore_index=ignore_index, include_background=include_background, reduction=reduction
    ).prepare(x, y)
    total = dense_eroded(prep.probs, prep.target, prep.mask, k, alpha)
    if reduction == "none":
        return total
    if reduction == "sum":
        return total.sum()
    return total.sum() / (prep.voxel_count().sum() * total.shape[1])


def labels_with_ignored(spatial, classes, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (2, 1, *spatial), generator=g)
    y[0, 0, :2] = IGNORE
    y[1, 0, ..., -1] = IGNORE
    return y


@pytest.fixture(params=["one volume per block", "default blocks"])
def block_bytes(request, monkeypatch):
    if request.param == "one volume per block":
        monkeypatch.setattr(_erosion, "CPU_BLOCK_BYTES", 1)
    return request.param


@pytest.mark.parametrize("spatial", [(11, 9), (6, 7, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", [None, IGNORE], ids=["all", "ignored"])
def test_matches_the_dense_formula(spatial, reduction, ignore, block_bytes):
    g = torch.Generator().manual_seed(3)
    x = (3 * torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = labels_with_ignored(spatial, 4, 4) if ignore else torch.randint(0, 4, (2, 1, *spatial), generator=g)
    loss = HausdorffERLoss(softmax=True, reduction=reduction, ignore_index=ignore, include_background=False)
    ours = loss(x, y)
    ref = dense_loss(x, y, reduction, ignore, include_background=False)
    upstream = torch.rand(ours.shape, generator=g, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad(ours, x, upstream)
    (grad_ref,) = torch.autograd.grad(ref, x, upstream)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(grad_ours, grad_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ties_at_the_min_and_max_share_the_gradient_as_autograd(reduction, block_bytes):
    # binary probabilities: squared errors of 0 and 1, so every erosion has runs of equal values at its min and max
    g = torch.Generator().manual_seed(5)
    probs = (torch.rand(2, 3, 12, 10, generator=g) > 0.3).double().requires_grad_(True)
    y = torch.randint(0, 3, (2, 1, 12, 10), generator=g)
    y[:, :, 3:9, 2:8] = 0  # a thick block: errors survive several erosions
    loss = HausdorffERLoss(reduction=reduction)
    ours = loss(probs, y)
    prep = loss.prepare(probs, y)
    ref = dense_eroded(prep.probs, prep.target, None, 10, 2.0)
    ref = ref if reduction == "none" else ref.mean()
    upstream = torch.rand(ours.shape, generator=g, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad(ours, probs, upstream)
    (grad_ref,) = torch.autograd.grad(ref, probs, upstream)
    assert torch.allclose(ours, ref, atol=1e-12)
    assert torch.allclose(grad_ours, grad_ref, atol=1e-12)


def test_erosions_that_die_out_stop_early_with_the_same_numbers():
    # a thin error line is gone after the first erosion; the other nine add and pass nothing
    x = torch.full((1, 2, 9, 9), -4.0, dtype=torch.float64)
    x[:, 0] = 4.0
    x[0, 1, 4, :] = 4.0  # class 1 predicted on a one-voxel line where the target says class 0
    x.requires_grad_(True)
    y = torch.zeros(1, 1, 9, 9, dtype=torch.long)
    for reduction in ("mean", "none"):
        ours = HausdorffERLoss(softmax=True, reduction=reduction)(x, y)
        ref = dense_loss(x, y, reduction)
        (grad_ours,) = torch.autograd.grad(ours.sum(), x)
        (grad_ref,) = torch.autograd.grad(ref.sum(), x)
        assert torch.allclose(ours, ref, atol=1e-14) and torch.allclose(grad_ours, grad_ref, atol=1e-14)


def test_a_perfect_prediction_has_zero_loss_and_gradient():
    y = torch.randint(0, 3, (2, 1, 8, 8))
    probs = F.one_hot(y[:, 0], 3).movedim(-1, 1).double().requires_grad_(True)
    loss = HausdorffERLoss()(probs, y)
    loss.backward()
    assert loss.item() == 0 and (probs.grad == 0).all()


@pytest.mark.parametrize("per_voxel", [False, True], ids=["sums", "per voxel"])
def test_gradcheck_with_ignored_voxels(per_voxel, block_bytes):
    g = torch.Generator().manual_seed(2)
    probs = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    target = F.one_hot(torch.randint(0, 3, (2, 5, 4), generator=g), 3).movedim(-1, 1).double()
    mask = (torch.rand(2, 1, 5, 4, generator=g) > 0.2).double()
    assert torch.autograd.gradcheck(
        lambda p: _erosion.eroded_errors(p, target, mask, 3, 2.0, per_voxel), (probs,), atol=1e-7
    )


def test_without_grad_no_gradient_is_computed():
    # seeded: about 1 random 8x8 draw in 40 has no error region that survives the first erosion (loss 0, as kornia)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 3, 8, 8, generator=g), torch.randint(0, 3, (1, 1, 8, 8), generator=g)
    with torch.no_grad():
        loss = HausdorffERLoss(softmax=True)(x, y)
    assert loss.grad_fn is None and loss > 0
    assert loss == HausdorffERLoss(softmax=True)(x.requires_grad_(), y)  # the same value as the differentiable path


def peak_bytes(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn().backward()
    in_use = peak = 0
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    for event in sorted(events, key=lambda e: e.start_ns()):
        in_use += event.nbytes()
        peak = max(peak, in_use)
    return peak


def test_peak_memory_stays_within_three_cross_entropies():
    # the dense autograd graph holds about five tensors per erosion (10x a cross-entropy step on the benchmark)
    torch.manual_seed(0)
    x = torch.randn(2, 5, 24, 24, 24, requires_grad=True)
    y = torch.randint(0, 5, (2, 1, 24, 24, 24))
    ce = peak_bytes(lambda: F.cross_entropy(x, y[:, 0]))
    ours = peak_bytes(lambda: HausdorffERLoss(softmax=True)(x, y))
    assert ours <= 3 * ce, (ours / 2**20, ce / 2**20)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_second_derivatives_under_create_graph(reduction):
    # the blocked backward is not differentiable again: under create_graph it differentiates the plain formula
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8), requires_grad=True)
    y = torch.randint(0, 3, (1, 1, 5, 4), generator=torch.Generator().manual_seed(9))
    y[0, 0, 0, 0] = IGNORE
    loss = HausdorffERLoss(softmax=True, k=3, reduction=reduction, ignore_index=IGNORE)
    assert torch.autograd.gradgradcheck(lambda v: loss(v, y), (x,))
