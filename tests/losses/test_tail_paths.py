"""Sensitivity-specificity and Boundary DoU with a softmax and hard labels take their sums from the label map.

:class:`medseg.losses._label_sums._SoftmaxLabelSquares` (gathers and float64 ``scatter_add`` by label, closed-form
backward through the softmax) replaces the one-hot target there. Values and gradients are compared with each loss's
formula written out densely here on a one-hot target (the Boundary DoU boundary counted with the authors' cross
convolution), never with the loss's own general path.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from medseg.losses import CompoundLoss, _label_sums, _prepare, get_loss

from .test_shared_prepare import counting_softmaxes

IGNORE = 255


def batch(seed: int = 0, classes: int = 4, shape=(2, 6, 5), ignore: bool = False, absent: int | None = None):
    """float64 logits ``(B, C, *shape[1:])`` and a label map; ``ignore`` marks some voxels ``IGNORE``, ``absent``
    leaves that class out of the target."""
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(shape[0], classes, *shape[1:], generator=g, dtype=torch.float64)).requires_grad_(True)
    labels = torch.randint(0, classes, (shape[0], 1, *shape[1:]), generator=g)
    if absent is not None:
        labels[labels == absent] = (absent + 1) % classes
    if ignore:
        labels[torch.rand(labels.shape, generator=g) < 0.2] = IGNORE
    return logits, labels


def one_hot_and_mask(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense one-hot target (zero at ignored voxels) and the ``(B, 1, ...)`` mask."""
    keep = labels != IGNORE
    onehot = F.one_hot(labels[:, 0].where(keep[:, 0], 0), logits.shape[1]).movedim(-1, 1).to(logits)
    mask = keep.to(logits)
    return onehot * mask, mask


def dense_sens_spec(logits, labels, r=0.05, include_background=True, batch=False, smooth=1e-5):
    """Brosch et al.: r Σ(g−p)²g / Σg + (1−r) Σ(g−p)²(1−g)m / Σ(1−g)m, per item and class (or over the batch)."""
    p = torch.softmax(logits, 1)
    g, m = one_hot_and_mask(logits, labels)
    if not include_background:
        p, g = p[:, 1:], g[:, 1:]
    dims = tuple(range(2, p.ndim)) if not batch else (0, *range(2, p.ndim))
    error = (g - p * m) ** 2
    miss = (error * g).sum(dims) / (g.sum(dims) + smooth)
    false_alarm = (error * (1 - g) * m).sum(dims) / (((1 - g) * m).sum(dims) + smooth)
    return r * miss + (1 - r) * false_alarm


def authors_boundary_count(g: torch.Tensor) -> torch.Tensor:
    """Boundary voxels per channel as the authors count them: a cross convolution with zero padding, voxels of the
    class whose sum is below the full cross (2 d + 1) lie on its boundary."""
    spatial = g.ndim - 2
    size = [3] * spatial
    kernel = torch.zeros(size, dtype=g.dtype)
    centre = tuple([1] * spatial)
    kernel[centre] = 1
    for d in range(spatial):
        for shift in (0, 2):
            index = list(centre)
            index[d] = shift
            kernel[tuple(index)] = 1
    conv = (F.conv2d if spatial == 2 else F.conv3d)(g.flatten(0, 1).unsqueeze(1), kernel[None, None], padding=1)
    full = conv.view_as(g) * g
    return ((full > 0) & (full < 2 * spatial + 1)).to(g.dtype)


def dense_boundary_dou(logits, labels, include_background=True, batch=False, alpha_max=0.8, smooth=1e-5):
    """Sun et al.: (Σp² + Σg² − 2I + s) / (Σp² + Σg² − (1 + α) I + s), α = min(1 − 2(C + s)/(S + s), 0.8)."""
    p = torch.softmax(logits, 1)
    g, m = one_hot_and_mask(logits, labels)
    p = p * m
    edge = authors_boundary_count(g)
    if not include_background:
        p, g, edge = p[:, 1:], g[:, 1:], edge[:, 1:]
    dims = tuple(range(2, p.ndim)) if not batch else (0, *range(2, p.ndim))
    intersection, area = (p * g).sum(dims), g.sum(dims)
    squares = (p * p).sum(dims) + area
    alpha = (1 - 2 * (edge.sum(dims) + smooth) / (area + smooth)).clamp(max=alpha_max).detach()
    return (squares - 2 * intersection + smooth) / (squares - (1 + alpha) * intersection + smooth)


DENSE = {"sens_spec": dense_sens_spec, "boundary_dou": dense_boundary_dou}


def no_one_hot():
    """Fail if the loss builds a one-hot target (the general path's ``B x C x N`` tensor)."""

    def refuse(self):
        raise AssertionError("a one-hot target was built")

    return mock.patch.object(_prepare.Prepared, "_build_target", refuse)


def counting_fast_path():
    calls = []
    original = _label_sums._SoftmaxLabelSquares.apply
    return calls, mock.patch.object(
        _label_sums._SoftmaxLabelSquares, "apply", lambda *a: calls.append(1) or original(*a)
    )


@pytest.mark.parametrize("name", ["sens_spec", "boundary_dou"])
@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 4, 3, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"ignore": True},
        {"absent": 2},
        {"include_background": False},
        {"batch": True},
        {"ignore": True, "batch": True, "include_background": False},
    ],
    ids=["plain", "ignore", "absent_class", "no_background", "batch", "all"],
)
def test_label_map_path_matches_the_dense_formula(name, shape, options):
    options = dict(options)
    logits, labels = batch(shape=shape, ignore=options.pop("ignore", False), absent=options.pop("absent", None))
    loss = get_loss(name, softmax=True, ignore_index=IGNORE, reduction="none", **options)
    calls, fast = counting_fast_path()
    with no_one_hot(), fast:
        value = loss(logits, labels)
    assert calls, "the label-map path was not taken"
    expected = DENSE[name](logits, labels, **options)
    torch.testing.assert_close(value.reshape(expected.shape), expected, rtol=1e-12, atol=1e-12)
    weights = torch.rand(expected.shape, generator=torch.Generator().manual_seed(1), dtype=expected.dtype)
    (grad,) = torch.autograd.grad((value.reshape(expected.shape) * weights).sum(), logits)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["sens_spec", "boundary_dou"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weight_and_reductions_match_the_dense_formula(name, reduction):
    logits, labels = batch(3, classes=3)
    weight = [0.5, 2.0, 1.0]
    with no_one_hot():
        value = get_loss(name, softmax=True, weight=weight, reduction=reduction)(logits, labels)
    per_class = DENSE[name](logits, labels) * torch.tensor(weight, dtype=torch.float64)
    expected = per_class.mean() if reduction == "mean" else per_class.sum()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["sens_spec", "boundary_dou"])
def test_one_hot_target_takes_the_label_map_path(name):
    logits, labels = batch(4)
    onehot = F.one_hot(labels[:, 0], logits.shape[1]).movedim(-1, 1)
    calls, fast = counting_fast_path()
    with fast:
        value = get_loss(name, softmax=True)(logits, onehot)
    assert calls
    torch.testing.assert_close(value, DENSE[name](logits, labels).mean(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["sens_spec", "boundary_dou"])
def test_float32_confident_predictions_keep_their_precision(name):
    """Near-perfect logits: the negatives' Σ p² is tiny next to the positives'; it is summed on its own (no
    difference of two large sums), so float32 stays close to the float64 formula."""
    logits, labels = batch(5, shape=(2, 16, 16))
    confident = (12 * F.one_hot(labels[:, 0], 4).movedim(-1, 1) + logits.detach()).float().requires_grad_(True)
    value = get_loss(name, softmax=True, reduction="none")(confident, labels)
    exact = confident.detach().double().requires_grad_(True)
    expected = DENSE[name](exact, labels)
    torch.testing.assert_close(value.double().reshape(expected.shape), expected, rtol=2e-5, atol=1e-9)
    (grad,) = torch.autograd.grad(value.sum(), confident)
    (expected_grad,) = torch.autograd.grad(expected.sum(), exact)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6 * float(expected_grad.abs().max()))


@pytest.mark.parametrize("masked", [False, True])
def test_label_squares_function_gradcheck_and_gradgradcheck(masked):
    logits, labels = batch(6, classes=3, shape=(2, 3, 4))
    mask = (torch.rand(2, 1, 3, 4, generator=torch.Generator().manual_seed(2)) > 0.3).double() if masked else None

    def sums(x):
        return _label_sums._SoftmaxLabelSquares.apply(x, labels[:, 0], mask)[:3]

    assert torch.autograd.gradcheck(sums, (logits,))
    assert torch.autograd.gradgradcheck(sums, (logits,))


@pytest.mark.parametrize("name", ["sens_spec", "boundary_dou"])
def test_second_derivatives_match_the_dense_formula(name):
    logits, labels = batch(7, ignore=True)
    value = get_loss(name, softmax=True, ignore_index=IGNORE)(logits, labels)
    expected = DENSE[name](logits, labels).mean()
    direction = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (grad,) = torch.autograd.grad(value, logits, create_graph=True)
    (expected_grad,) = torch.autograd.grad(expected, logits, create_graph=True)
    (hvp,) = torch.autograd.grad((grad * direction).sum(), logits)
    (expected_hvp,) = torch.autograd.grad((expected_grad * direction).sum(), logits)
    torch.testing.assert_close(hvp, expected_hvp, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["sens_spec", "boundary_dou"])
def test_in_a_compound_the_terms_share_one_softmax(name):
    logits, labels = batch(8)
    loss = CompoundLoss({"ce": 1.0, name: 1.0}, loss_kwargs={name: {"softmax": True}})
    with counting_softmaxes() as calls:
        value = loss(logits, labels)
    assert sum(calls.values()) == 1, calls
    expected = F.cross_entropy(logits, labels[:, 0]) + DENSE[name](logits, labels).mean()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("sens_spec", {"sigmoid": True}), ("boundary_dou", {"sigmoid": True}), ("sens_spec", {"softmax": True})],
)
def test_other_activations_and_soft_targets_keep_the_general_path(name, kwargs):
    logits, labels = batch(9)
    target = F.one_hot(labels[:, 0], 4).movedim(-1, 1).double()
    if kwargs.get("softmax"):  # soft target: no label map
        target = 0.8 * target + 0.05
    calls, fast = counting_fast_path()
    with fast:
        value = get_loss(name, **kwargs)(logits, target)
    assert not calls
    assert torch.isfinite(value)
