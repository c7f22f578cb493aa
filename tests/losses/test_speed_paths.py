"""Faster paths for hard (0/1) targets give the general formula's values and gradients, with fewer passes."""

from __future__ import annotations

import contextlib
from unittest import mock

import torch

from medseg.losses import BalancedCrossEntropyLoss, FocalLoss, pixel


@contextlib.contextmanager
def counting_logsigmoid():
    """Count log σ calls, under both names the losses reach it by."""
    calls = []
    original = torch.nn.functional.logsigmoid

    def counted(x):
        calls.append(x.shape)
        return original(x)

    with mock.patch.object(pixel, "logsigmoid", counted), mock.patch.object(torch.nn.functional, "logsigmoid", counted):
        yield calls


def test_sigmoid_focal_with_labels_takes_one_logsigmoid_and_equals_the_terms_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = (30 * torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    labels = torch.randint(0, 3, (2, 1, 5, 4), generator=g)
    with counting_logsigmoid() as calls:
        value = FocalLoss(gamma=2.0)(logits, labels)
    # one C-wide log σ and one of each voxel's label channel; the general formula takes two C-wide (σ(x), σ(−x))
    assert sum(shape.numel() for shape in calls) == logits.numel() + labels.numel()
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).to(logits)
    p = torch.sigmoid(logits)
    p_t = torch.where(onehot > 0, p, 1 - p)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    expected = ((1 - p_t) ** 2 * bce).mean()
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(value, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-12)


def test_balanced_ce_with_labels_takes_one_logsigmoid_and_equals_hed_by_hand():
    g = torch.Generator().manual_seed(1)
    logits = (20 * torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    labels = torch.randint(0, 3, (2, 1, 6, 5), generator=g)
    with counting_logsigmoid() as calls:
        value = BalancedCrossEntropyLoss()(logits, labels)
    assert sum(shape.numel() for shape in calls) == logits.numel() + labels.numel()
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).to(logits)
    beta = 1 - onehot.sum((0, 2, 3), keepdim=True) / onehot[:, :1].numel()  # fraction of negatives per class
    weight = torch.where(onehot > 0, beta, 1 - beta)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, weight)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(value, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-12)
