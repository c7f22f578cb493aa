"""exp_log and unified_focal with a softmax and a label map take one chunked pass
(:func:`~medseg.losses._fused_compound.softmax_overlap_label_log_prob`): the overlap sums and each voxel's label
log-probability from one log-softmax, closed-form backward. Checked against the dense formulas written here
(explicit one-hot target, torch's softmax), float64 ``gradcheck``/``gradgradcheck``, 2D and 3D, ``ignore_index``,
``include_background=False``, an empty foreground and chunk boundaries."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from medseg.losses import CompoundLoss, _fused_compound, get_loss
from medseg.losses._fused_compound import _SoftmaxOverlapLabelLogProb

from .test_shared_prepare import counting_softmaxes


def batch(seed: int, spatial: tuple[int, ...], classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(2, classes, *spatial, generator=g, dtype=torch.float64)).requires_grad_(True)
    labels = torch.randint(0, classes, (2, 1, *spatial), generator=g)
    return logits, labels


def dense_parts(logits, labels, ignore_index, include_background):
    """Softmax, log-softmax, one-hot target, mask and spatial dims, the kept classes only."""
    mask = torch.ones_like(labels, dtype=logits.dtype)
    if ignore_index is not None:
        mask = (labels != ignore_index).to(logits)
        labels = labels.masked_fill(labels == ignore_index, 0)
    g = torch.nn.functional.one_hot(labels[:, 0], logits.shape[1]).movedim(-1, 1).to(logits) * mask
    first = 0 if include_background else 1
    p, log_p = torch.softmax(logits, 1)[:, first:], torch.log_softmax(logits, 1)[:, first:]
    return p, log_p, g[:, first:], mask, tuple(range(2, logits.ndim)), first


def dense_exp_log(logits, labels, ignore_index=None, include_background=True, gamma=0.3, smooth=1.0):
    """Wong et al. (weights 0.8 / 0.2, batch label frequencies) on an explicit one-hot target."""
    p, log_p, g_all, mask, dims, _ = dense_parts(logits, labels, ignore_index, True)
    first = 0 if include_background else 1  # class 0 still counts in the frequencies and the expectation
    counts_all = g_all.sum((0, *dims))
    p, log_p, g = p[:, first:], log_p[:, first:], g_all[:, first:]
    tp = (p * mask * g).sum(dims)
    dice = (2 * tp + smooth) / ((p * mask).sum(dims) + g.sum(dims) + smooth)
    dice_term = (-torch.log(dice)).clamp_min(1e-12).pow(gamma).mean(1)
    counts = counts_all[first:]
    weights = torch.where(counts > 0, mask.sum() / counts.clamp_min(1), 0.0).sqrt().view(1, -1, *[1] * len(dims))
    ce = (g * weights * (-log_p).clamp_min(1e-12).pow(gamma)).sum((1, *dims)) / mask.sum((1, *dims))
    return (0.8 * dice_term + 0.2 * ce).mean()


def dense_unified_focal(logits, labels, ignore_index=None, include_background=True, lam=0.5, delta=0.6, gamma=0.5):
    """Yeung et al.'s asymmetric unified focal loss (class 0 background) on an explicit one-hot target."""
    smooth = 1e-5
    p, log_p, g, mask, dims, first = dense_parts(logits, labels, ignore_index, include_background)
    tp = (p * mask * g).sum(dims)
    fn, fp = g.sum(dims) - tp, (p * mask).sum(dims) - tp
    miss = 1 - (tp + smooth) / (tp + delta * fn + (1 - delta) * fp + smooth)
    per_class = [
        miss[:, k] if k + first == 0 else miss[:, k].clamp_min(1e-12).pow(1 - gamma) for k in range(miss.shape[1])
    ]
    focal_tversky = torch.stack(per_class, 1).mean(1)
    ce = -g * log_p
    per_voxel = [
        (1 - delta) * (1 - p[:, k]).clamp_min(1e-12).pow(gamma) * ce[:, k] if k + first == 0 else delta * ce[:, k]
        for k in range(ce.shape[1])
    ]
    focal = (torch.stack(per_voxel, 1) * mask).sum((1, *dims)) / mask.sum((1, *dims))
    return (lam * focal_tversky + (1 - lam) * focal).mean()


DENSE = {"exp_log": dense_exp_log, "unified_focal": dense_unified_focal}


def value_and_grad(fn, logits, labels):
    value = fn(logits, labels)
    (grad,) = torch.autograd.grad(value, logits)
    return value, grad


def counting_fused():
    calls = []
    original = _SoftmaxOverlapLabelLogProb.apply
    return calls, mock.patch.object(_SoftmaxOverlapLabelLogProb, "apply", lambda *a: calls.append(1) or original(*a))


@pytest.mark.parametrize("name", ["exp_log", "unified_focal"])
@pytest.mark.parametrize("spatial", [(6, 5), (4, 3, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("ignore_index", [None, 255])
@pytest.mark.parametrize("include_background", [True, False])
def test_fused_pass_equals_the_dense_formula(name, spatial, ignore_index, include_background):
    logits, labels = batch(len(spatial) + 3 * include_background, spatial)
    labels = labels.clone()
    labels[labels == 3] = 2  # a class absent from the batch
    if ignore_index is not None:
        labels[0, 0, 1] = ignore_index
        labels[1, 0, 0] = ignore_index
    loss = get_loss(name, softmax=True, include_background=include_background, ignore_index=ignore_index)
    calls, count = counting_fused()
    with count, counting_softmaxes() as softmaxes, mock.patch.object(_fused_compound, "chunk_voxels", lambda x: 7):
        value, grad = value_and_grad(loss, logits, labels)  # chunks of 7 voxels: boundaries inside each item
    assert calls == [1] and set(softmaxes) == {"log_softmax"}, softmaxes  # one per chunk, nothing else
    expected, expected_grad = value_and_grad(
        lambda x, y: DENSE[name](x, y, ignore_index, include_background), logits, labels
    )
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["exp_log", "unified_focal"])
def test_empty_foreground_stays_exact_and_finite(name):
    logits, labels = batch(21, (5, 6))
    labels = torch.zeros_like(labels)  # background only: every foreground class absent
    value, grad = value_and_grad(get_loss(name, softmax=True), logits, labels)
    expected, expected_grad = value_and_grad(DENSE[name], logits, labels)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("masked", [False, True])
def test_function_gradcheck_and_gradgradcheck(masked):
    logits, labels = batch(22, (3, 4), classes=3)
    mask = (torch.rand(labels.shape, generator=torch.Generator().manual_seed(1)) > 0.3).double() if masked else None
    g = torch.Generator().manual_seed(2)
    w_tp, w_sum_p, w_log = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((2, 3), (2, 3), (2, 1, 12)))

    def scalar(x):
        tp, sum_p, _, log_p = _SoftmaxOverlapLabelLogProb.apply(x, labels[:, 0], mask)
        return (w_tp * tp).sum() + (w_sum_p * sum_p).sum() + (w_log * log_p).sum()

    with mock.patch.object(_fused_compound, "chunk_voxels", lambda x: 5):
        assert torch.autograd.gradcheck(scalar, (logits,))
        assert torch.autograd.gradgradcheck(scalar, (logits,))


@pytest.mark.parametrize("name", ["exp_log", "unified_focal"])
def test_second_derivatives_of_the_losses(name):
    logits, labels = batch(23, (3, 4))
    labels = labels.clone()
    labels[0, 0, 0] = 255
    loss = get_loss(name, softmax=True, ignore_index=255)
    assert torch.autograd.gradgradcheck(lambda x: loss(x, labels), (logits,))


@pytest.mark.parametrize("name", ["exp_log", "unified_focal"])
def test_in_a_compound_after_cross_entropy_one_softmax_is_shared(name):
    """After the CE term's log-softmax the term reads that one (no fused pass, no second softmax)."""
    logits, labels = batch(24, (5, 4))
    loss = CompoundLoss({"ce": 0.5, name: 1.0}, loss_kwargs={name: {"softmax": True}})
    calls, count = counting_fused()
    with count, counting_softmaxes() as softmaxes:
        value, grad = value_and_grad(loss, logits, labels)
    assert calls == [] and sum(softmaxes.values()) == 1, softmaxes
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 0])
    expected, expected_grad = value_and_grad(lambda x, y: 0.5 * ce + DENSE[name](x, y), logits, labels)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_a_dice_term_after_it_reads_the_fused_sums():
    logits, labels = batch(25, (5, 4))
    loss = CompoundLoss(
        {"exp_log": 1.0, "dice": 0.5}, loss_kwargs={"exp_log": {"softmax": True}, "dice": {"softmax": True}}
    )
    with counting_softmaxes() as softmaxes:
        value, grad = value_and_grad(loss, logits, labels)
    assert sum(softmaxes.values()) == 1, softmaxes
    p, _, g, _, dims, _ = dense_parts(logits, labels, None, True)
    dice = (1 - (2 * (p * g).sum(dims) + 1e-5) / (p.sum(dims) + g.sum(dims) + 1e-5)).mean()
    expected, expected_grad = value_and_grad(lambda x, y: dense_exp_log(x, y) + 0.5 * dice, logits, labels)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_float32_on_several_chunks_matches_float64():
    logits, labels = batch(26, (48, 40, 40), classes=5)
    x32 = logits.detach().float().requires_grad_(True)
    for name in ("exp_log", "unified_focal"):
        value, grad = value_and_grad(get_loss(name, softmax=True), x32, labels)
        expected, expected_grad = value_and_grad(DENSE[name], logits, labels)
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-3, atol=1e-9)
