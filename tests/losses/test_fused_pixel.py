"""Focal and class-balanced BCE with hard labels and a reduction: fused paths without a one-hot target.

The sigmoid focal loss and ``balanced_ce`` run :class:`medseg.losses.pixel._SigmoidFocalSum` (one chunked pass
computing the weighted sum and its gradient); the softmax focal loss gathers each voxel's label log-probability.
Values and gradients are compared with the dense formulas written here on an explicit one-hot target
(torchvision's sigmoid focal terms, ``binary_cross_entropy_with_logits``, MONAI's softmax focal terms), never with
the losses' own general path.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from medseg.losses import BalancedCrossEntropyLoss, DiceFocalLoss, FocalLoss, _prepare, get_loss, pixel


def batch(seed: int, classes: int = 4, spatial=(5, 6), scale: float = 3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(2, classes, *spatial, generator=g, dtype=dtype)).requires_grad_(True)
    labels = torch.randint(0, classes, (2, 1, *spatial), generator=g)
    return logits, labels


def no_one_hot():
    """Fail if a loss builds a one-hot target (the general path's ``B x C x N`` tensor)."""

    def refuse(self):
        raise AssertionError("a one-hot target was built")

    return mock.patch.object(_prepare.Prepared, "_build_target", refuse)


def value_and_grad(loss, logits, target):
    value = loss(logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    return value, grad


def one_hot(labels, classes, dtype):
    return torch.nn.functional.one_hot(labels[:, 0], classes).movedim(-1, 1).to(dtype)


def per_class(values, like):
    return torch.as_tensor(values, dtype=like.dtype).view(1, -1, *([1] * (like.ndim - 2)))


def reduce_terms(terms, mask, reduction):
    """MONAI's focal reductions over ``(B, C, *spatial)`` terms with ignored voxels counting nowhere."""
    dims = tuple(range(2, terms.ndim))
    if reduction == "sum":
        return (terms.sum(dims) / mask.sum(dims)).sum()
    return terms.sum() / (mask.sum() * terms.shape[1])


def hand_sigmoid_focal(x, labels, mask, gamma, alpha, weight, first, reduction):
    """torchvision's ``sigmoid_focal_loss`` terms with MONAI's alpha (scalar: α/1−α, sequence: α_c on positives)."""
    g = one_hot(labels, x.shape[1], x.dtype)[:, first:]
    x = x[:, first:]
    p = torch.sigmoid(x)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, g, reduction="none")
    terms = (1 - (p * g + (1 - p) * (1 - g))) ** gamma * bce
    if isinstance(alpha, float):
        terms = terms * (alpha * g + (1 - alpha) * (1 - g))
    elif alpha is not None:
        terms = terms * (1 + (per_class(alpha, x) - 1) * g)
    if weight is not None:
        terms = terms * per_class(weight, x)
    return reduce_terms(terms * mask, mask, reduction)


#: alpha values exact in float32 (the alpha buffer is float32 in every path)
SIGMOID_CASES = [
    {"gamma": 2.0, "alpha": None, "weight": None, "include_background": True, "reduction": "mean"},
    {"gamma": 2.0, "alpha": 0.25, "weight": [1.0, 2.0, 0.5, 1.0], "include_background": True, "reduction": "sum"},
    {"gamma": 0.5, "alpha": [0.25, 0.5, 0.875], "weight": 2.0, "include_background": False, "reduction": "mean"},
    {"gamma": 0.0, "alpha": None, "weight": [0.5, 1.0, 3.0], "include_background": False, "reduction": "sum"},
    {"gamma": 1.5, "alpha": 0.75, "weight": None, "include_background": True, "reduction": "mean"},
]


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
@pytest.mark.parametrize("case", SIGMOID_CASES)
def test_sigmoid_focal_builds_no_one_hot_and_equals_torchvision_terms(case, spatial):
    logits, labels = batch(seed=1, spatial=spatial, scale=6.0)  # confident voxels: 1 - p_t down to ~1e-8
    labels = labels.clone()
    labels.view(-1)[[0, 7, 11]] = 255
    case = dict(case)
    first = 0 if case["include_background"] else 1
    loss = FocalLoss(ignore_index=255, **case)
    with mock.patch.object(pixel, "_CHUNK", 37), no_one_hot():  # several chunks, the last one short
        value, grad = value_and_grad(loss, logits, labels)
    mask = (labels != 255).to(logits)
    kept = labels.masked_fill(labels == 255, 0)
    expected, expected_grad = value_and_grad(
        lambda x, _: hand_sigmoid_focal(
            x, kept, mask, case["gamma"], case["alpha"], case["weight"], first, case["reduction"]
        ),
        logits,
        labels,
    )
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_sigmoid_focal_of_an_empty_foreground_and_one_channel():
    logits, _ = batch(seed=2, classes=3)
    empty = torch.zeros(2, 1, 5, 6, dtype=torch.long)  # every voxel background: classes 1, 2 have negatives only
    with no_one_hot():
        value, grad = value_and_grad(FocalLoss(), logits, empty)
    expected, expected_grad = value_and_grad(
        lambda x, y: hand_sigmoid_focal(x, y, torch.ones_like(y, dtype=x.dtype), 2.0, None, None, 0, "mean"),
        logits,
        empty,
    )
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)

    binary, labels = batch(seed=3, classes=1)  # one channel: the foreground's logit, label 1 positive
    labels = torch.randint(0, 2, labels.shape, generator=torch.Generator().manual_seed(3))
    with no_one_hot():
        value, grad = value_and_grad(FocalLoss(alpha=0.25, ignore_index=7), binary, labels)
    g = labels.to(binary)
    p = torch.sigmoid(binary)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(binary, g, reduction="none")
    expected = ((1 - (p * g + (1 - p) * (1 - g))) ** 2 * bce * (0.25 * g + 0.75 * (1 - g))).mean()
    (expected_grad,) = torch.autograd.grad(expected, binary)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("gamma", [2.0, 1.5, 0.0])
def test_fused_sigmoid_sum_gradcheck_and_second_derivatives(gamma, first):
    logits, labels = batch(seed=4, classes=3, spatial=(3, 2))
    b, c = logits.shape[0], logits.shape[1] - first  # first = 1: channels of classes 1, 2; label 0 has no positive
    x = logits.detach()[:, first:].reshape(b, c, -1).requires_grad_(True)
    lab = labels.reshape(b, -1)
    pos_w = torch.rand(b, c, dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    neg_w = torch.rand(b, c, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(lab.numel()).view_as(lab) % 5 != 0).to(x.dtype)

    def total(z):
        return pixel._SigmoidFocalSum.apply(z, lab, first, pos_w, neg_w, mask, gamma)

    with mock.patch.object(pixel, "_CHUNK", 5):
        assert torch.autograd.gradcheck(total, (x,))
        assert torch.autograd.gradgradcheck(total, (x,))
        assert torch.autograd.gradcheck(
            lambda z: pixel._SigmoidFocalSum.apply(z, lab, first, None, None, None, 2.0), (x,)
        )


@pytest.mark.parametrize("spatial", [(6, 5), (3, 4, 5)])
@pytest.mark.parametrize("options", [{}, {"include_background": False, "reduction": "sum"}])
def test_balanced_ce_builds_no_one_hot_and_equals_weighted_bce(options, spatial):
    logits, labels = batch(seed=5, spatial=spatial, scale=8.0)
    labels = labels.clone()
    labels.view(-1)[[1, 2, 30]] = 255
    labels[labels == 2] = 1  # class 2 absent: beta = 1, its terms weigh 0
    with mock.patch.object(pixel, "_CHUNK", 29), no_one_hot():
        value, grad = value_and_grad(BalancedCrossEntropyLoss(ignore_index=255, **options), logits, labels)
    first = 0 if options.get("include_background", True) else 1
    mask = (labels != 255).to(logits)

    def by_hand(x, y):  # HED: beta_c = negatives / voxels over the batch, positives weighted beta, negatives 1 - beta
        g = one_hot(y.masked_fill(y == 255, 0), 4, x.dtype)[:, first:] * mask
        dims = (0, *range(2, x.ndim))
        beta = 1 - g.sum(dims, keepdim=True) / mask.sum()
        weight = torch.where(g > 0, beta, 1 - beta) * mask
        terms = torch.nn.functional.binary_cross_entropy_with_logits(x[:, first:], g, weight, reduction="none")
        return terms.sum() if options.get("reduction") == "sum" else terms.sum() / (mask.sum() * g.shape[1])

    expected, expected_grad = value_and_grad(by_hand, logits, labels)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_balanced_ce_one_channel_counts_the_foreground():
    logits, _ = batch(seed=6, classes=1)
    labels = torch.randint(0, 2, (2, 1, 5, 6), generator=torch.Generator().manual_seed(6))
    with no_one_hot():
        value, grad = value_and_grad(BalancedCrossEntropyLoss(ignore_index=255), logits, labels)
    g = labels.to(logits)
    beta = 1 - g.mean()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, g, torch.where(g > 0, beta, 1 - beta))
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def hand_softmax_focal(x, labels, mask, gamma, alpha, weight, include_background, reduction):
    """MONAI's softmax focal terms ``-α_c w_c g_c (1 - p_c)^γ log p_c`` on a one-hot target; without background the
    softmax runs over the kept classes (MONAI's rule)."""
    g = one_hot(labels, x.shape[1], x.dtype)
    if not include_background:
        x, g = x[:, 1:], g[:, 1:]
    log_p = torch.log_softmax(x, 1)
    terms = -g * (1 - log_p.exp()) ** gamma * log_p
    if isinstance(alpha, float):
        alpha = [1 - alpha] + [alpha] * (x.shape[1] - 1)
    if alpha is not None:
        terms = terms * per_class(alpha, x)
    if weight is not None:
        terms = terms * per_class(weight, x)
    return reduce_terms(terms * mask, mask, reduction)


SOFTMAX_CASES = [
    {"gamma": 2.0, "alpha": None, "weight": None, "include_background": True, "reduction": "mean"},
    {"gamma": 2.0, "alpha": 0.25, "weight": [1.0, 2.0, 0.5, 1.0], "include_background": True, "reduction": "sum"},
    {"gamma": 0.5, "alpha": [0.25, 0.5, 0.875], "weight": 2.0, "include_background": False, "reduction": "mean"},
    {"gamma": 0.0, "alpha": None, "weight": [0.5, 1.0, 3.0], "include_background": False, "reduction": "sum"},
]


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
@pytest.mark.parametrize("case", SOFTMAX_CASES)
def test_softmax_focal_builds_no_one_hot_and_equals_monai_terms(case, spatial):
    logits, labels = batch(seed=7, spatial=spatial)
    labels = labels.clone()
    labels.view(-1)[[0, 9]] = 255
    case = dict(case)
    loss = FocalLoss(use_softmax=True, ignore_index=255, **case)
    with no_one_hot():
        value, grad = value_and_grad(loss, logits, labels)
    mask = (labels != 255).to(logits)
    kept = labels.masked_fill(labels == 255, 0)
    expected, expected_grad = value_and_grad(lambda x, _: hand_softmax_focal(x, kept, mask, **case), logits, labels)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_softmax_focal_equals_monai_on_a_label_map():
    monai_losses = pytest.importorskip("monai.losses")
    logits, labels = batch(seed=8, spatial=(4, 5, 6))
    for options in ({}, {"gamma": 0.5, "alpha": 0.25}, {"include_background": False, "weight": [1.0, 2.0, 3.0]}):
        ours = value_and_grad(FocalLoss(use_softmax=True, **options), logits, labels)
        theirs = value_and_grad(monai_losses.FocalLoss(to_onehot_y=True, use_softmax=True, **options), logits, labels)
        # MONAI returns the softmax focal loss in float32
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-8, check_dtype=False)


def test_unreduced_terms_and_half_precision_keep_working():
    logits, labels = batch(seed=9)
    for use_softmax in (False, True):
        terms = FocalLoss(use_softmax=use_softmax, reduction="none")(logits, labels)
        assert terms.shape == logits.shape
        mean = FocalLoss(use_softmax=use_softmax)(logits, labels)
        torch.testing.assert_close(mean, terms.mean(), rtol=1e-10, atol=1e-12)

    half = logits.detach().half().requires_grad_(True)
    for loss in (FocalLoss(), FocalLoss(use_softmax=True), BalancedCrossEntropyLoss()):
        value, grad = value_and_grad(loss, half, labels)
        expected, expected_grad = value_and_grad(loss, half.detach().float().requires_grad_(True), labels)
        assert value.dtype == torch.float32 and grad.dtype == torch.float16
        torch.testing.assert_close(value, expected)
        torch.testing.assert_close(grad, expected_grad.half())


def test_dice_focal_builds_no_one_hot():
    monai_losses = pytest.importorskip("monai.losses")
    logits, labels = batch(seed=10, spatial=(4, 5, 6))
    with no_one_hot():
        ours = value_and_grad(DiceFocalLoss(softmax=True), logits, labels)
    theirs = value_and_grad(monai_losses.DiceFocalLoss(to_onehot_y=True, softmax=True), logits, labels)
    # MONAI's sigmoid focal term differs from the formula by ~1e-8 in float64 (see test_fast_paths)
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-8)


class Float64Spy(TorchDispatchMode):
    """Records the ops that produce a float64 tensor."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        if any(isinstance(o, torch.Tensor) and o.dtype == torch.float64 for o in outputs):
            self.ops.append(str(func))
        return out


def test_a_device_without_float64_sums_the_label_map_in_float32():
    """Apple MPS has no float64: there the label-map sums accumulate in float32 (forced here on the CPU)."""
    assert _prepare.accumulation_dtype(torch.device("mps")) == torch.float32
    assert _prepare.accumulation_dtype(torch.device("cpu")) == torch.float64
    logits, labels = batch(seed=11, spatial=(4, 5, 6), dtype=torch.float32)
    labels = labels.clone()
    labels.view(-1)[[0, 3]] = 255
    losses = [
        get_loss("dice", softmax=True, ignore_index=255),
        get_loss("exp_log", softmax=True, ignore_index=255),
        get_loss("combo", softmax=True, ignore_index=255),
        FocalLoss(ignore_index=255),
        BalancedCrossEntropyLoss(ignore_index=255),
    ]
    for loss in losses:
        expected, expected_grad = value_and_grad(loss, logits, labels)
        spy = Float64Spy()
        with mock.patch.object(_prepare, "_NO_FLOAT64", frozenset({"cpu"})), spy:
            value, grad = value_and_grad(loss, logits, labels)
        assert not spy.ops, (loss, spy.ops)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_softmax_label_sums_gradcheck_and_second_derivatives():
    logits, labels = batch(seed=12, classes=3, spatial=(3, 4))
    mask = (torch.arange(labels.numel()).view_as(labels) % 4 != 0).to(logits)
    grads = torch.randn(4, 2, 3, dtype=logits.dtype, generator=torch.Generator().manual_seed(0))

    def weighted(x, m):
        tp, sum_p, _, pos_log, neg_log = _prepare._SoftmaxLabelSums.apply(x, labels[:, 0], m, True)
        return (grads[0] * tp + grads[1] * sum_p + grads[2] * pos_log + grads[3] * neg_log).sum()

    x = logits.detach().requires_grad_(True)
    with mock.patch.object(_prepare, "_CHUNK", 7):  # several chunks, the last one short
        for m in (mask, None):
            assert torch.autograd.gradcheck(lambda z, m=m: weighted(z, m), (x,))
            assert torch.autograd.gradgradcheck(lambda z, m=m: weighted(z, m), (x,))


def hand_combo(x, labels, mask, alpha, beta, first, batch_, smooth=1e-5):
    """Taghanaki et al.'s combo loss on an explicit one-hot target: β-weighted one-vs-rest BCE of the softmax and the
    Dice loss, per item and class (over the batch with ``batch_``), mean over the kept classes."""
    p, log_p = torch.softmax(x, 1), torch.log_softmax(x, 1)
    g = one_hot(labels, x.shape[1], x.dtype) * mask
    log_not_p = torch.log1p(-p.clamp(max=1 - torch.finfo(x.dtype).eps))
    ce_terms = -(beta * g * log_p + (1 - beta) * (1 - g) * log_not_p) * mask
    dims = (0, 2, 3, 4) if batch_ else (2, 3, 4)
    ce = ce_terms.sum(dims) / (mask.sum() if batch_ else mask.sum((1, 2, 3, 4)).unsqueeze(1))
    tp = (p * g * mask).sum(dims)
    dice = 1 - (2 * tp + smooth) / ((p * mask).sum(dims) + g.sum(dims) + smooth)
    return (alpha * ce + (1 - alpha) * dice)[..., first:].mean()


@pytest.mark.parametrize("options", [{}, {"include_background": False, "batch": True, "alpha": 0.25, "beta": 0.75}])
def test_combo_takes_one_fused_pass_and_equals_the_formula_in_3d(options):
    logits, labels = batch(seed=13, spatial=(3, 4, 5), scale=6.0)
    labels = labels.clone()
    labels.view(-1)[[2, 5, 8]] = 255
    loss = get_loss("combo", softmax=True, ignore_index=255, **options)
    calls = []
    original = _prepare._SoftmaxLabelSums.apply
    with (
        mock.patch.object(_prepare, "_CHUNK", 23),
        mock.patch.object(_prepare._SoftmaxLabelSums, "apply", lambda *a: calls.append(1) or original(*a)),
        mock.patch.object(_prepare._SoftmaxLabelOverlap, "apply", side_effect=AssertionError("second pass")),
        mock.patch.object(_prepare._ProbLabelOverlap, "apply", side_effect=AssertionError("second pass")),
        no_one_hot(),
    ):
        value, grad = value_and_grad(loss, logits, labels)
    assert len(calls) == 1
    mask = (labels != 255).to(logits)
    kept = labels.masked_fill(labels == 255, 0)
    first = 0 if options.get("include_background", True) else 1
    expected, expected_grad = value_and_grad(
        lambda x, _: hand_combo(
            x, kept, mask, options.get("alpha", 0.5), options.get("beta", 0.5), first, options.get("batch", False)
        ),
        logits,
        labels,
    )
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    # the closed form p (a - Σ p a) rounds differently where 1 / (1 - p) is large (confident wrong classes)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-11)


def test_combo_second_derivatives_stay_exact():
    logits, labels = batch(seed=14, classes=3, spatial=(3, 2))
    labels = labels.clone()
    labels[0, 0, 0, 0] = 255
    loss = get_loss("combo", softmax=True, beta=0.25, ignore_index=255)
    assert torch.autograd.gradgradcheck(lambda x: loss(x, labels), (logits,))


def test_fused_passes_chunk_on_the_cpu_only():
    """Cache-sized chunks on the CPU; one chunk on an accelerator (one kernel launch per op, not per chunk)."""
    assert _prepare.chunk_voxels(torch.empty(2, 4, 10**6), 4000) == 500
    assert _prepare.chunk_voxels(torch.empty(2, 4, 10**6, device="meta"), 4000) == 10**6
