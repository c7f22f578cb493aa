"""Softmax region losses with hard labels take TP and the sums from the label map, with no one-hot target.

``overlap_stats`` runs :class:`medseg.losses._prepare._SoftmaxLabelOverlap` (gather + float64 ``scatter_add``
forward, closed-form backward through the softmax Jacobian) where it is exact. Values and gradients are compared
with MONAI's losses or the formula by hand on a one-hot target, never with the loss's own general path.
"""

from __future__ import annotations

from unittest import mock

import monai.losses
import pytest
import torch

from medseg.losses import (
    CompoundLoss,
    DiceLoss,
    FocalLoss,
    GeneralizedDiceLoss,
    JaccardLoss,
    TverskyLoss,
    _prepare,
    get_loss,
)

from .test_shared_prepare import counting_softmaxes


def batch(seed: int = 0, classes: int = 4, shape=(2, 5, 6), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(shape[0], classes, *shape[1:], generator=g, dtype=dtype)).requires_grad_(True)
    labels = torch.randint(0, classes, (shape[0], 1, *shape[1:]), generator=g)
    return logits, labels


def no_one_hot():
    """Fail if any loss builds a one-hot target (the general path's ``B x C x N`` tensor)."""

    def refuse(self):
        raise AssertionError("a one-hot target was built")

    return mock.patch.object(_prepare.Prepared, "_build_target", refuse)


def counting_fast_path():
    calls = []
    original = _prepare._SoftmaxLabelOverlap.apply
    return calls, mock.patch.object(_prepare._SoftmaxLabelOverlap, "apply", lambda *a: calls.append(1) or original(*a))


def value_and_grad(loss, logits, target):
    value = loss(logits, target)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    return value, grad


MONAI_PAIRS = {
    "dice": (lambda **k: DiceLoss(**k), lambda **k: monai.losses.DiceLoss(to_onehot_y=True, **k)),
    "jaccard": (  # MONAI's soft Jaccard is DiceLoss(jaccard=True) with both smoothing terms doubled
        lambda **k: JaccardLoss(**k),
        lambda **k: monai.losses.DiceLoss(to_onehot_y=True, jaccard=True, smooth_nr=2e-5, smooth_dr=2e-5, **k),
    ),
    "tversky": (
        lambda **k: TverskyLoss(alpha=0.3, beta=0.7, **k),
        lambda **k: monai.losses.TverskyLoss(to_onehot_y=True, alpha=0.3, beta=0.7, **k),
    ),
    "generalized_dice": (
        lambda **k: GeneralizedDiceLoss(**k),
        lambda **k: monai.losses.GeneralizedDiceLoss(to_onehot_y=True, **k),
    ),
}
OPTIONS = [
    {},
    {"include_background": False},
    {"batch": True},
    {"include_background": False, "batch": True, "reduction": "none"},
    {"reduction": "sum"},
]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("name", sorted(MONAI_PAIRS))
def test_fast_path_builds_no_one_hot_and_equals_monai(name, options):
    ours, theirs = MONAI_PAIRS[name]
    logits, labels = batch(seed=len(name))
    calls, counting = counting_fast_path()
    with no_one_hot(), counting:
        value, grad = value_and_grad(ours(softmax=True, **options), logits, labels)
    assert calls == [1]
    expected, expected_grad = value_and_grad(theirs(softmax=True, **options), logits, labels)
    torch.testing.assert_close(value, expected.reshape(value.shape), rtol=1e-8, atol=1e-10)  # MONAI: other sum order
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


def hand_dice(logits, labels, mask, include_background=True, batch=False, smooth=1e-5):
    """Dice loss on an explicit one-hot target, ignored voxels zeroed in p and g."""
    p = torch.softmax(logits, 1) * mask
    g = torch.nn.functional.one_hot(labels[:, 0], logits.shape[1]).movedim(-1, 1).to(logits) * mask
    if not include_background:
        p, g = p[:, 1:], g[:, 1:]
    dims = [0, 2, 3] if batch else [2, 3]
    tp = (p * g).sum(dims)
    return (1 - (2 * tp + smooth) / (p.sum(dims) + g.sum(dims) + smooth)).mean()


@pytest.mark.parametrize("batch_", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_ignore_index_on_the_fast_path_equals_the_masked_formula(include_background, batch_):
    logits, labels = batch(seed=3)
    labels = labels.clone()
    labels[0, 0, :2] = 255  # a stripe of ignored voxels, and a whole item's corner
    labels[1, 0, -1, -2:] = 255
    loss = DiceLoss(softmax=True, ignore_index=255, include_background=include_background, batch=batch_)
    calls, counting = counting_fast_path()
    with no_one_hot(), counting:
        value, grad = value_and_grad(loss, logits, labels)
    assert calls == [1]
    mask = (labels != 255).to(logits)
    expected, expected_grad = value_and_grad(
        lambda x, y: hand_dice(x, y.masked_fill(y == 255, 0), mask, include_background, batch_), logits, labels
    )
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)
    assert grad[0, :, :2].abs().max() == 0  # ignored voxels get no gradient


def test_one_hot_target_takes_the_fast_path_too():
    logits, labels = batch(seed=4)
    onehot = torch.nn.functional.one_hot(labels[:, 0], 4).movedim(-1, 1).to(logits)
    calls, counting = counting_fast_path()
    with counting:
        value, grad = value_and_grad(DiceLoss(softmax=True), logits, onehot)
    assert calls == [1]
    expected, expected_grad = value_and_grad(monai.losses.DiceLoss(softmax=True), logits, onehot)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "loss, soft",
    [
        (DiceLoss(softmax=True, squared_pred=True), False),
        (DiceLoss(softmax=True, soft_label=True), False),
        (DiceLoss(sigmoid=True), False),
        (DiceLoss(softmax=True), True),  # soft target: no label map
    ],
    ids=["squared_pred", "soft_label", "sigmoid", "soft_target"],
)
def test_general_path_where_the_label_map_does_not_hold(loss, soft):
    logits, labels = batch(seed=5)
    target = labels
    if soft:
        target = torch.softmax(torch.randn_like(logits.detach()), 1)
    calls, counting = counting_fast_path()
    with counting:
        loss(logits, target)
    assert calls == []


def counting(function):
    calls = []
    original = function.apply
    return calls, mock.patch.object(function, "apply", lambda *a: calls.append(1) or original(*a))


SOFTMAX = {"softmax": True}
COMPOUNDS = [
    (
        lambda: get_loss("dice_ce", softmax=True),
        lambda: monai.losses.DiceCELoss(to_onehot_y=True, softmax=True),
        _prepare._ProbLabelOverlap,  # after the CE term's log-softmax: its exp
    ),
    (
        lambda: get_loss("dice_focal", softmax=True),  # sigmoid focal term: the Dice term takes the only softmax
        lambda: monai.losses.DiceFocalLoss(to_onehot_y=True, softmax=True),
        _prepare._SoftmaxLabelOverlap,
    ),
    (
        lambda: CompoundLoss(
            {"dice": 1.0, "tversky": 0.5}, loss_kwargs={"dice": {"softmax": True}, "tversky": {"softmax": True}}
        ),
        lambda: (
            lambda x, y: (
                monai.losses.DiceLoss(to_onehot_y=True, softmax=True)(x, y)
                + 0.5 * monai.losses.TverskyLoss(to_onehot_y=True, softmax=True)(x, y)
            )
        ),
        _prepare._ProbLabelOverlap,  # log_softmax_first: the block's one softmax
    ),
]


@pytest.mark.parametrize("ours, theirs, function", COMPOUNDS, ids=["dice_ce", "dice_focal", "compound"])
def test_compounds_take_the_label_map_path_with_one_softmax_and_equal_monai(ours, theirs, function):
    logits, labels = batch(seed=8)
    calls, count = counting(function)
    with count, counting_softmaxes() as softmaxes:
        value, grad = value_and_grad(ours(), logits, labels)
    assert calls and sum(softmaxes.values()) == 1, softmaxes
    expected, expected_grad = value_and_grad(theirs(), logits, labels)
    # MONAI's sigmoid focal term alone differs from medseg's by ~1e-9 (value and gradient) in float64
    torch.testing.assert_close(value, expected, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=1e-8)


IGNORING = {"softmax": True, "ignore_index": 255}


def test_second_derivatives_stay_exact():
    logits, labels = batch(seed=6, shape=(2, 3, 4))
    labels[0, 0, 0] = 255
    for loss in (
        DiceLoss(softmax=True, ignore_index=255),
        GeneralizedDiceLoss(softmax=True, batch=True, ignore_index=255),
        CompoundLoss({"ce": 1.0, "dice": 1.0}, loss_kwargs={"ce": {"ignore_index": 255}, "dice": IGNORING}),
    ):
        assert torch.autograd.gradgradcheck(lambda x, loss=loss: loss(x, labels), (logits,))


def test_float32_sums_over_a_large_volume_stay_accurate():
    logits, labels = batch(seed=7, classes=5, shape=(1, 64, 64, 64), dtype=torch.float32)
    value, grad = value_and_grad(DiceLoss(softmax=True, include_background=False), logits, labels)
    x64 = logits.detach().double().requires_grad_(True)
    expected, expected_grad = value_and_grad(
        monai.losses.DiceLoss(softmax=True, to_onehot_y=True, include_background=False), x64, labels
    )
    torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-11)


def hand_exp_log(logits, labels, mask, include_background=True, gamma=0.3, smooth=1.0):
    """Wong et al.'s exponential logarithmic loss on an explicit one-hot target (weights 0.8 / 0.2)."""
    p = torch.softmax(logits, 1)
    g = torch.nn.functional.one_hot(labels[:, 0], logits.shape[1]).movedim(-1, 1).to(logits) * mask
    first = 0 if include_background else 1
    p, g, log_p = p[:, first:], g[:, first:], torch.log_softmax(logits, 1)[:, first:]
    tp = (p * mask * g).sum((2, 3))
    dice = (2 * tp + smooth) / ((p * mask).sum((2, 3)) + g.sum((2, 3)) + smooth)
    dice_term = (-torch.log(dice)).clamp_min(1e-12).pow(gamma).mean(1)
    counts = g.sum((0, 2, 3))
    weights = torch.where(counts > 0, mask.sum() / counts.clamp_min(1), 0.0).sqrt().view(1, -1, 1, 1)
    ce = (g * weights * (-log_p).clamp_min(1e-12).pow(gamma)).sum((1, 2, 3)) / mask.sum((1, 2, 3))
    return (0.8 * dice_term + 0.2 * ce).mean()


@pytest.mark.parametrize("include_background", [True, False])
def test_exp_log_builds_no_one_hot_takes_one_softmax_and_equals_the_formula(include_background):
    logits, labels = batch(seed=9)
    labels = labels.clone()
    labels[labels == 3] = 2  # class 3 absent: weight 0
    labels[0, 0, 0] = 255
    loss = get_loss("exp_log", softmax=True, include_background=include_background, ignore_index=255)
    with no_one_hot(), counting_softmaxes() as softmaxes:
        value, grad = value_and_grad(loss, logits, labels)
    assert sum(softmaxes.values()) == 1, softmaxes
    mask = (labels != 255).to(logits)
    expected, expected_grad = value_and_grad(
        lambda x, y: hand_exp_log(x, y.masked_fill(y == 255, 0), mask, include_background), logits, labels
    )
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def hand_combo(logits, labels, mask, alpha=0.5, beta=0.3, smooth=1e-5):
    """Taghanaki et al.'s combo loss on an explicit one-hot target, per item and class, then the mean."""
    p = torch.softmax(logits, 1)
    g = torch.nn.functional.one_hot(labels[:, 0], logits.shape[1]).movedim(-1, 1).to(logits)
    log_not_p = torch.log1p(-p.clamp(max=1 - torch.finfo(p.dtype).eps))
    ce = (-(beta * g * torch.log_softmax(logits, 1) + (1 - beta) * (1 - g) * log_not_p) * mask).sum((2, 3))
    ce = ce / mask.sum((1, 2, 3)).unsqueeze(1)
    tp = (p * g * mask).sum((2, 3))
    dice = 1 - (2 * tp + smooth) / ((p * mask).sum((2, 3)) + (g * mask).sum((2, 3)) + smooth)
    return (alpha * ce + (1 - alpha) * dice).mean()


def test_combo_builds_no_one_hot_takes_one_softmax_and_equals_the_formula():
    logits, labels = batch(seed=10)
    labels = labels.clone()
    labels[1, 0, 2] = 255
    loss = get_loss("combo", softmax=True, beta=0.3, ignore_index=255)
    with no_one_hot(), counting_softmaxes() as softmaxes:
        value, grad = value_and_grad(loss, logits, labels)
    assert sum(softmaxes.values()) == 1, softmaxes
    mask = (labels != 255).to(logits)
    expected, expected_grad = value_and_grad(
        lambda x, y: hand_combo(x, y.masked_fill(y == 255, 0), mask), logits, labels
    )
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_combo_negatives_keep_float32_accuracy_on_confident_logits():
    """log(1 - p) of each voxel's own label (near its floor, -16) is left out, not added and then subtracted."""
    logits, labels = batch(seed=11, shape=(2, 64, 64), dtype=torch.float32)
    logits = (10 * logits).detach().requires_grad_(True)
    value, grad = value_and_grad(get_loss("combo", softmax=True), logits, labels)
    mask = torch.ones_like(labels, dtype=logits.dtype)
    expected, expected_grad = value_and_grad(lambda x, y: hand_combo(x, y, mask, beta=0.5), logits, labels)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-8)  # gradients ~1e-5 here


def hand_unified_focal(logits, labels, mask, include_background, lam=0.5, delta=0.6, gamma=0.5, smooth=1e-5):
    """Yeung et al.'s asymmetric unified focal loss on an explicit one-hot target (softmax, class 0 background)."""
    p, log_p = torch.softmax(logits, 1), torch.log_softmax(logits, 1)
    g = torch.nn.functional.one_hot(labels[:, 0], logits.shape[1]).movedim(-1, 1).to(logits) * mask
    first = 0 if include_background else 1
    p, log_p, g = p[:, first:], log_p[:, first:], g[:, first:]
    tp = (p * mask * g).sum((2, 3))
    fn, fp = g.sum((2, 3)) - tp, (p * mask).sum((2, 3)) - tp
    miss = 1 - (tp + smooth) / (tp + delta * fn + (1 - delta) * fp + smooth)
    per_class = [miss[:, k] if k + first == 0 else miss[:, k].pow(1 - gamma) for k in range(miss.shape[1])]
    focal_tversky = torch.stack(per_class, 1).mean(1)
    ce = -g * log_p
    per_voxel = [
        (1 - delta) * (1 - p[:, k]).pow(gamma) * ce[:, k] if k + first == 0 else delta * ce[:, k]
        for k in range(ce.shape[1])
    ]
    focal = (torch.stack(per_voxel, 1) * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3))
    return (lam * focal_tversky + (1 - lam) * focal).mean()


@pytest.mark.parametrize("include_background", [True, False])
def test_unified_focal_builds_no_one_hot_takes_one_softmax_and_equals_the_formula(include_background):
    logits, labels = batch(seed=12)
    labels = labels.clone()
    labels[0, 0, 1] = 255
    loss = get_loss("unified_focal", softmax=True, include_background=include_background, ignore_index=255)
    with no_one_hot(), counting_softmaxes() as softmaxes:
        value, grad = value_and_grad(loss, logits, labels)
    assert sum(softmaxes.values()) == 1, softmaxes
    mask = (labels != 255).to(logits)
    expected, expected_grad = value_and_grad(
        lambda x, y: hand_unified_focal(x, y.masked_fill(y == 255, 0), mask, include_background), logits, labels
    )
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def graph_nodes(tensor):
    """Names of the autograd nodes behind ``tensor``."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


@pytest.mark.parametrize("gamma", [2.0, 0.5, 0.0])
def test_sigmoid_focal_takes_one_analytic_node_and_equals_torchvision_terms(gamma):
    logits, labels = batch(seed=13)
    logits = (4 * logits).detach().requires_grad_(True)  # confident voxels, 1 - p_t down to ~1e-16
    labels = labels.clone()
    labels[1, 0, 0] = 255
    loss = FocalLoss(gamma=gamma, alpha=0.25, weight=[1.0, 2.0, 0.5, 1.0], ignore_index=255)
    value, grad = value_and_grad(loss, logits, labels)
    nodes = graph_nodes(loss(logits, labels))
    assert "_SigmoidFocalSumBackward" in nodes and "SigmoidBackward0" not in nodes
    mask = (labels != 255).to(logits)
    g = torch.nn.functional.one_hot(labels.masked_fill(labels == 255, 0)[:, 0], 4).movedim(-1, 1).to(logits)

    def by_hand(x, _):  # torchvision.ops.sigmoid_focal_loss's terms, MONAI's alpha and class weights, then the mean
        p = torch.sigmoid(x)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x, g, reduction="none")
        terms = (1 - (p * g + (1 - p) * (1 - g))) ** gamma * bce * (0.25 * g + 0.75 * (1 - g))
        terms = terms * torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=x.dtype).view(1, -1, 1, 1) * mask
        return terms.sum() / (mask.sum() * 4)

    expected, expected_grad = value_and_grad(by_hand, logits, labels)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-12)


def test_sigmoid_focal_second_derivatives_stay_exact():
    logits, labels = batch(seed=14, shape=(2, 3, 2))
    for gamma in (2.0, 1.5):
        loss = FocalLoss(gamma=gamma, alpha=0.25)
        assert torch.autograd.gradgradcheck(lambda x, loss=loss: loss(x, labels), (logits,))
