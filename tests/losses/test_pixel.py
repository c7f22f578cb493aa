"""Pixel-level losses against pytorch_toolbelt, nnU-Net's TopK definition, MONAI, torchvision's focal formula,
hand-worked cases and plain per-voxel loops."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import monai.losses
import pytest
import torch

from medseg.losses import (
    BalancedCrossEntropyLoss,
    ConservativeLoss,
    DistancePenalizedCELoss,
    FocalLoss,
    TopKLoss,
    get_loss,
    loss_info,
)

IGNORE = 255
LN2, LN3 = math.log(2), math.log(3)


def batch(spatial=(5, 6), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, classes, *spatial, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (2, 1, *spatial), generator=g)
    return x, y


def one_hot(y: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y[:, 0].clamp(0, classes - 1), classes).movedim(-1, 1).double()


def with_ignored(y: torch.Tensor) -> torch.Tensor:
    y = y.clone()
    y[0, 0, :2] = IGNORE
    y[1, 0, -1] = IGNORE
    return y


def row(values) -> torch.Tensor:
    """Per-voxel values as a (1, 1, 1, N) image."""
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 1, -1)


# ----------------------------------------------------------------------------------------------- shared behaviour
PIXEL_LOSSES = ["balanced_ce", "topk", "focal", "dpce", "conservative"]


def penalty(y: torch.Tensor, classes: int, seed=5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(y.shape[0], classes, *y.shape[2:], generator=g, dtype=torch.float64)


def evaluate(name: str, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    aux = {"dist": penalty(y, x.shape[1])} if name == "dpce" else {}
    return get_loss(name, **kwargs)(x, y, **aux)


@pytest.mark.parametrize("name", PIXEL_LOSSES)
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
def test_label_map_and_one_hot_targets_agree(name, spatial):
    x, y = batch(spatial)
    assert torch.allclose(evaluate(name, x, y), evaluate(name, x, one_hot(y, 3)), atol=1e-12)


@pytest.mark.parametrize("name", PIXEL_LOSSES)
def test_reductions_are_consistent(name):
    x, y = batch()
    per_voxel = evaluate(name, x, y, reduction="none")
    total = evaluate(name, x, y, reduction="sum")
    # focal's "sum" is MONAI's: the spatial mean (over 30 voxels) of each item and class, summed
    assert torch.allclose(per_voxel.sum() / (30 if name == "focal" else 1), total)
    # "none" shapes: per voxel (B, *spatial), except the per-class losses: (B, C, *spatial)
    expected = (2, 3, 5, 6) if name in ("balanced_ce", "focal") else (2, 5, 6)
    assert per_voxel.shape == expected
    # "mean" divides the sum by the voxels (x classes for the per-class losses; by K selected voxels for topk)
    count = {"balanced_ce": 2 * 30 * 3, "focal": 2 * 30 * 3, "topk": int(60 * 10 / 100)}.get(name, 60)
    assert torch.allclose(evaluate(name, x, y), per_voxel.sum() / count)


@pytest.mark.parametrize("name", ["topk", "dpce", "conservative"])
def test_single_channel_sigmoid_equals_two_class_softmax(name):
    # softmax over logits (0, z) gives p_1 = sigmoid(z): the binary single-channel form must agree
    z, y = batch(classes=2)
    z = z[:, :1]
    aux = {"dist": penalty(y, 1)} if name == "dpce" else {}
    loss = get_loss(name, reduction="none")
    assert torch.allclose(loss(z, y, **aux), loss(torch.cat([torch.zeros_like(z), z], 1), y, **aux))


def test_registry_entries():
    assert loss_info("dpce").aux_keys == ("dist",)
    assert loss_info("conservative").family == "extra"
    assert {loss_info(n).family for n in ["balanced_ce", "topk", "focal", "dpce"]} == {"pixel"}


# ------------------------------------------------------------------------------------------------ balanced CE
def toolbelt_balanced_bce():
    """pytorch_toolbelt's balanced BCE, loaded by file path (the package __init__ needs torchvision)."""
    spec = importlib.util.find_spec("pytorch_toolbelt")
    if spec is None or spec.origin is None:
        pytest.skip("pytorch_toolbelt is not installed")
    path = Path(spec.origin).parent / "losses" / "balanced_bce.py"
    module_spec = importlib.util.spec_from_file_location("toolbelt_balanced_bce", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.balanced_binary_cross_entropy_with_logits


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_balanced_ce_binary_matches_toolbelt(spatial, reduction):
    reference = toolbelt_balanced_bce()
    x, y = batch(spatial, classes=1)
    y = (torch.rand(y.shape, generator=torch.Generator().manual_seed(1)) > 0.7).long()
    ours = BalancedCrossEntropyLoss(reduction=reduction)(x, y)
    assert torch.allclose(ours, reference(x, y.double(), gamma=1.0, reduction=reduction), atol=1e-5)


@pytest.mark.parametrize("include_background", [True, False])
def test_balanced_ce_multiclass_is_toolbelt_per_class(include_background):
    reference = toolbelt_balanced_bce()
    x, y = batch((4, 5, 3), classes=4)
    g = one_hot(y, 4)
    kept = range(0 if include_background else 1, 4)
    # one-vs-rest: toolbelt on each class channel alone (its own β), averaged over the kept classes
    expected = torch.stack([reference(x[:, c], g[:, c]) for c in kept]).mean()
    ours = BalancedCrossEntropyLoss(include_background=include_background)(x, y)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_balanced_ce_ignored_voxels_leave_the_counts():
    reference = toolbelt_balanced_bce()
    x, y = batch(classes=3)
    y = with_ignored(y)
    valid = (y != IGNORE).double()
    g = one_hot(y, 3)
    # toolbelt excludes targets equal to ignore_index from β and zeroes their terms, but its mean still counts
    # them: compare sums, and our mean divides by the voxels that take part x classes
    expected = sum(
        reference(x[:, c], torch.where(valid[:, 0] > 0, g[:, c], IGNORE), ignore_index=IGNORE, reduction="sum")
        for c in range(3)
    )
    loss = BalancedCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")
    assert torch.allclose(loss(x, y), expected, atol=1e-5)
    mean = BalancedCrossEntropyLoss(ignore_index=IGNORE)(x, y)
    assert torch.allclose(mean, expected / (valid.sum() * 3), atol=1e-5)


def test_balanced_ce_hand_worked():
    # 4 voxels, g = [1, 0, 0, 0] -> β = 3/4 (fraction of negatives); logits [0, 0, ln 3, -ln 3]
    #   voxel 1 (positive, p = 1/2): -β ln(1/2)        = 0.75 ln 2
    #   voxel 2 (negative, p = 1/2): -(1-β) ln(1/2)    = 0.25 ln 2
    #   voxel 3 (negative, p = 3/4): -(1-β) ln(1/4)    = 0.50 ln 2
    #   voxel 4 (negative, p = 1/4): -(1-β) ln(3/4)    = 0.50 ln 2 - 0.25 ln 3
    #   sum = 2 ln 2 - 0.25 ln 3 = 1.111641; mean over 4 voxels = 0.277910
    x = row([0.0, 0.0, LN3, -LN3])
    g = row([1, 0, 0, 0])
    assert BalancedCrossEntropyLoss()(x, g.long()).item() == pytest.approx((2 * LN2 - 0.25 * LN3) / 4, abs=1e-12)
    # a second, absent class: β = 1, so its negatives weigh 1 - β = 0 and it adds nothing; mean over 8 terms
    x2 = torch.cat([x, torch.full_like(x, 3.0)], 1)
    g2 = torch.cat([g, torch.zeros_like(g)], 1)
    assert BalancedCrossEntropyLoss()(x2, g2).item() == pytest.approx((2 * LN2 - 0.25 * LN3) / 8, abs=1e-12)


# ------------------------------------------------------------------------------------------------------- TopK
def nnunet_topk(logits: torch.Tensor, labels: torch.Tensor, k: float = 10) -> torch.Tensor:
    """nnU-Net v2's TopKLoss definition (robust_ce_loss.py): per-voxel CE over the whole batch, the
    int(N k / 100) largest, their mean."""
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 0].long(), reduction="none")
    values, _ = torch.topk(ce.view(-1), int(ce.numel() * k / 100), sorted=False)
    return values.mean()


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 6)], ids=["2d", "3d"])
@pytest.mark.parametrize("k", [10, 35])
def test_topk_matches_nnunet(spatial, k):
    x, y = batch(spatial, classes=4)
    assert torch.allclose(TopKLoss(k=k)(x, y), nnunet_topk(x, y, k), atol=1e-5)


def test_topk_hand_worked_ignored_voxels_leave_the_count():
    # 10 voxels, 2 classes, label 0, class-1 logit ln(2^m - 1) for m = 1..10: CE = ln(1 + 2^m - 1) = m ln 2.
    # k = 50 %, no ignore: N = 10, K = 5 -> m = 6..10 -> mean 8 ln 2.
    # The voxels m = 7..10 ignored: N = 6, K = 3 -> m = 4, 5, 6 -> mean 5 ln 2 (nnU-Net would keep N = 10).
    z = row([math.log(2**m - 1) for m in range(1, 11)])
    x = torch.cat([torch.zeros_like(z), z], 1)
    y = torch.zeros_like(z, dtype=torch.long)
    assert TopKLoss(k=50)(x, y).item() == pytest.approx(8 * LN2, abs=1e-12)
    y[..., 6:] = IGNORE
    assert TopKLoss(k=50, ignore_index=IGNORE)(x, y).item() == pytest.approx(5 * LN2, abs=1e-12)
    # "none": the selected voxels' CE in place, 0 elsewhere
    kept = TopKLoss(k=50, ignore_index=IGNORE, reduction="none")(x, y)
    assert torch.allclose(kept.flatten(), torch.tensor([0, 0, 0, 4, 5, 6, 0, 0, 0, 0.0], dtype=kept.dtype) * LN2)


def test_topk_against_a_loop_with_ignored_voxels():
    x, y = batch((5, 5, 4), classes=3)
    y = with_ignored(y)
    values = []
    for b in range(2):
        for index in torch.cartesian_prod(*(torch.arange(n) for n in y.shape[2:])):
            label = int(y[(b, 0, *index)])
            if label != IGNORE:
                logits = [float(x[(b, c, *index)]) for c in range(3)]
                values.append(math.log(sum(math.exp(v) for v in logits)) - logits[label])
    top = sorted(values, reverse=True)[: int(len(values) * 10 / 100)]
    assert TopKLoss(ignore_index=IGNORE)(x, y).item() == pytest.approx(sum(top) / len(top), abs=1e-10)


def test_topk_selects_at_least_one_voxel_and_all_ignored_is_zero():
    x, y = batch((1, 3), classes=2)  # 6 voxels: 10 % rounds down to 0, we keep the single largest
    ce = torch.nn.functional.cross_entropy(x, y[:, 0], reduction="none")
    assert torch.allclose(TopKLoss()(x, y), ce.max())
    assert TopKLoss(ignore_index=IGNORE)(x, torch.full_like(y, IGNORE)).item() == 0
    with pytest.raises(ValueError, match="k is a percentage"):
        TopKLoss(k=0)


# ------------------------------------------------------------------------------------------------------ focal
WEIGHT = [0.5, 1.0, 2.0, 1.5]


@pytest.mark.parametrize("spatial", [(6, 5), (4, 3, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("softmax", [True, False], ids=["softmax", "sigmoid"])
@pytest.mark.parametrize("include_background", [True, False], ids=["bg", "no_bg"])
@pytest.mark.parametrize(
    "options",
    [{}, {"weight": WEIGHT}, {"alpha": 0.25}, {"alpha": [0.1, 0.2, 0.3, 0.4]}, {"gamma": 0.5}],
    ids=["plain", "weight", "alpha", "alpha_seq", "gamma"],
)
@pytest.mark.parametrize("ignore", [False, True], ids=["all", "ignore"])
def test_focal_matches_monai(spatial, softmax, include_background, options, ignore):
    x, y = batch(spatial, classes=4)
    kept = 4 if include_background else 3
    options = {key: value[4 - kept :] if isinstance(value, list) else value for key, value in options.items()}
    if softmax and not include_background and options.get("alpha") == 0.25:
        pytest.skip("scalar alpha without background: MONAI warns and ignores it, ours raises (tested below)")
    if ignore:
        y = with_ignored(y)
        options["ignore_index"] = IGNORE
    kwargs = {"include_background": include_background, "use_softmax": softmax, **options}
    for reduction in ("none", "sum", "mean"):
        ours = FocalLoss(reduction=reduction, **kwargs)(x, y)
        reference = monai.losses.FocalLoss(to_onehot_y=True, reduction=reduction, **kwargs)(x, y).double()
        if reduction == "mean" and ignore:
            # MONAI's masked mean divides by the kept voxels only, its plain mean by voxels x classes (ours, always)
            reference = reference / kept
        assert ours.shape == reference.shape
        assert torch.allclose(ours, reference, atol=1e-5), reduction


@pytest.mark.parametrize("use_softmax", [False, True], ids=["sigmoid", "softmax"])
def test_focal_mean_is_the_same_with_and_without_ignore_index(use_softmax):
    # docs/monai_differences.md, "Focal mean with ignore_index": MONAI's masked mean divides by the voxels only,
    # so setting ignore_index multiplies its loss by the class count even when no voxel is ignored
    x, y = batch(classes=4)
    plain = FocalLoss(use_softmax=use_softmax)(x, y)
    assert torch.allclose(FocalLoss(use_softmax=use_softmax, ignore_index=IGNORE)(x, y), plain, rtol=1e-12)
    monai_plain = monai.losses.FocalLoss(to_onehot_y=True, use_softmax=use_softmax)(x, y)
    monai_masked = monai.losses.FocalLoss(to_onehot_y=True, use_softmax=use_softmax, ignore_index=IGNORE)(x, y)
    assert torch.allclose(plain, monai_plain.double(), rtol=1e-5)
    assert torch.allclose(monai_masked, 4 * monai_plain, rtol=1e-5)


def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss as documented (torchvision is not installable here), reduction mean."""
    p = torch.sigmoid(inputs)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean()


@pytest.mark.parametrize("alpha", [0.25, None])
@pytest.mark.parametrize("classes", [1, 3])
def test_focal_sigmoid_matches_torchvision_formula(alpha, classes):
    x, y = batch((4, 5, 6), classes=classes)
    g = one_hot(y, classes) if classes > 1 else y.double()
    expected = torchvision_sigmoid_focal_loss(x, g, alpha=-1 if alpha is None else alpha)
    assert torch.allclose(FocalLoss(alpha=alpha)(x, y), expected, atol=1e-10)
    if classes == 1:  # one channel is binary: use_softmax=True gives the sigmoid focal loss, with a warning
        with pytest.warns(UserWarning, match="single channel"):
            assert torch.allclose(FocalLoss(alpha=alpha, use_softmax=True)(x, y), expected, atol=1e-10)


def test_focal_gamma_zero_is_cross_entropy():
    # softmax: MONAI's mean over voxels x classes, so CE / C; sigmoid: BCE
    x, y = batch(classes=4)
    ce = torch.nn.functional.cross_entropy(x, y[:, 0])
    assert torch.allclose(FocalLoss(gamma=0, use_softmax=True)(x, y), ce / 4)
    g = one_hot(y, 4)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, g)
    assert torch.allclose(FocalLoss(gamma=0)(x, g), bce)


def test_focal_hand_worked():
    # softmax, 2 classes, logits (0, ln 3): p = (1/4, 3/4). Label 1: (1 - 3/4)^2 (-ln 3/4) = 0.0625 ln(4/3);
    # label 0: (1 - 1/4)^2 (-ln 1/4) = 0.5625 ln 4. Mean over the 2 voxels x 2 classes (MONAI's reduction).
    x = torch.cat([row([0.0, 0.0]), row([LN3, LN3])], 1)
    y = torch.tensor([1, 0]).view(1, 1, 1, 2)
    expected = (0.0625 * math.log(4 / 3) + 0.5625 * math.log(4)) / 4
    assert FocalLoss(use_softmax=True)(x, y).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "kwargs", [{"alpha": 0.25}, {"use_softmax": True, "include_background": False, "alpha": [0.3, 0.7]}]
)
def test_focal_gradcheck_beyond_the_default(kwargs):
    x, y = batch((3, 4), classes=3)
    loss = FocalLoss(**kwargs, ignore_index=IGNORE).double()
    y = with_ignored(y)
    assert torch.autograd.gradcheck(lambda v: loss(v, y), (x.requires_grad_(True),), atol=1e-5)


def test_focal_rejects_ambiguous_alpha():
    with pytest.raises(ValueError, match="scalar alpha"):
        FocalLoss(include_background=False, alpha=0.25, use_softmax=True)
    with pytest.raises(ValueError, match=r"scalar alpha must be in \[0, 1\]"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="alpha values must be non-negative"):
        FocalLoss(alpha=[0.5, -0.5, 1.0])
    with pytest.raises(ValueError, match=r"length of alpha \(2\)"):
        FocalLoss(alpha=[0.5, 0.5])(*batch())


# ------------------------------------------------------------------------------------------------------- DPCE
def test_dpce_hand_worked_uses_the_true_class_map():
    # 4 voxels, 2 classes, logits (0, z) with z = [0, ln 3, -ln 3, ln 3], labels [0, 1, 1, 0]
    # class-wise maps Φ_0 = [1, 0.9, 0.8, 0.25], Φ_1 = [0.7, 0.5, 0, 0.6]; each voxel reads its true class's map
    #   a: p_0 = 1/2, CE = ln 2, Φ_0 = 1     -> 2    ln 2
    #   b: p_1 = 3/4, CE = ln 4/3, Φ_1 = 0.5 -> 1.5  ln(4/3)
    #   c: p_1 = 1/4, CE = ln 4,   Φ_1 = 0   -> 1    ln 4
    #   d: p_0 = 1/4, CE = ln 4,   Φ_0 = 0.25 -> 1.25 ln 4
    #   sum = 9.5 ln 2 - 1.5 ln 3 = 4.936980; mean = 1.234245
    z = row([0.0, LN3, -LN3, LN3])
    x = torch.cat([torch.zeros_like(z), z], 1)
    y = row([0, 1, 1, 0]).long()
    dist = torch.cat([row([1, 0.9, 0.8, 0.25]), row([0.7, 0.5, 0, 0.6])], 1)
    loss = DistancePenalizedCELoss()
    assert loss(x, y, dist=dist).item() == pytest.approx((9.5 * LN2 - 1.5 * LN3) / 4, abs=1e-12)
    # a (B, 1, ...) map weighs every voxel with its value: (1 + [1, 0.5, 0, 0.25]) . CE
    single = row([1, 0.5, 0, 0.25])
    assert loss(x, y, dist=single).item() == pytest.approx((9.5 * LN2 - 1.5 * LN3) / 4, abs=1e-12)


@pytest.mark.parametrize("spatial", [(4, 5), (3, 4, 2)], ids=["2d", "3d"])
def test_dpce_against_a_loop(spatial):
    x, y = batch(spatial, classes=3)
    y = with_ignored(y)
    dist = penalty(y, 3)
    total, count = 0.0, 0
    for b in range(2):
        for index in torch.cartesian_prod(*(torch.arange(n) for n in spatial)):
            label = int(y[(b, 0, *index)])
            if label == IGNORE:
                continue
            logits = [float(x[(b, c, *index)]) for c in range(3)]
            nll = math.log(sum(math.exp(v) for v in logits)) - logits[label]
            total += (1 + float(dist[(b, label, *index)])) * nll
            count += 1
    loss = DistancePenalizedCELoss(ignore_index=IGNORE)
    assert loss(x, y, dist=dist).item() == pytest.approx(total / count, abs=1e-10)


def test_dpce_zero_map_is_cross_entropy():
    x, y = batch(classes=4)
    dist = torch.zeros(2, 4, 5, 6, dtype=torch.float64)
    assert torch.allclose(DistancePenalizedCELoss()(x, y, dist=dist), torch.nn.functional.cross_entropy(x, y[:, 0]))


def test_dpce_rejects_missing_or_bad_maps():
    x, y = batch()
    loss = DistancePenalizedCELoss()
    with pytest.raises(ValueError, match="needs the aux tensor 'dist'"):
        loss(x, y)
    with pytest.raises(ValueError, match=r"dist map shape \(2, 2, 5, 6\) does not match"):
        loss(x, y, dist=torch.rand(2, 2, 5, 6))
    with pytest.raises(ValueError, match="dist map shape"):
        loss(x, y, dist=torch.rand(2, 3, 5, 5))
    bad = torch.rand(2, 3, 5, 6)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        loss(x, y, dist=bad)
    with pytest.raises(ValueError, match="negative"):
        loss(x, y, dist=-torch.rand(2, 3, 5, 6))


# ------------------------------------------------------------------------------------------------ conservative
def test_conservative_hand_worked():
    # 2 classes, logits (0, z). With t = -ln p_t the loss is 5 (1 - t)^2 ln t, t clamped to >= 1e-3:
    #   z = 0,          label 0: p_t = 1/2,   t = ln 2  = 0.693147 -> 5 * 0.094158 * -0.366513 = -0.172552
    #   z = ln 9,       label 0: p_t = 1/10,  t = ln 10 = 2.302585 -> 5 * 1.696728 *  0.834032 =  7.075631
    #   z = 20,         label 1: p_t ~ 1 - 2e-9, t < 1e-3 -> 5 * 0.999^2 * ln 1e-3          = -34.469733
    #   z = -ln(e - 1), label 1: p_t = 1/e,   t = 1 -> 0
    #   mean = -27.566654 / 4 = -6.891664
    z = row([0.0, math.log(9), 20.0, -math.log(math.e - 1)])
    x = torch.cat([torch.zeros_like(z), z], 1)
    y = row([0, 0, 1, 1]).long()
    per_voxel = ConservativeLoss(reduction="none")(x, y).flatten().tolist()
    assert per_voxel == pytest.approx([-0.172552, 7.075631, -34.469733, 0.0], abs=1e-6)
    assert ConservativeLoss()(x, y).item() == pytest.approx(-6.891664, abs=1e-6)


@pytest.mark.parametrize("base", [math.e, 2.0])
def test_conservative_against_a_loop(base):
    x, y = batch((3, 4, 5), classes=4)
    y = with_ignored(y)
    total, count = 0.0, 0
    for b in range(2):
        for index in torch.cartesian_prod(*(torch.arange(n) for n in y.shape[2:])):
            label = int(y[(b, 0, *index)])
            if label == IGNORE:
                continue
            logits = [float(x[(b, c, *index)]) for c in range(4)]
            p_t = math.exp(logits[label]) / sum(math.exp(v) for v in logits)
            t = max(-math.log(p_t, base), 1e-3)
            total += 5 * (1 + -t) ** 2 * math.log(t, base)  # λ (1 + log_a p_t)^2 log_a(-log_a p_t)
            count += 1
    loss = ConservativeLoss(base=base, ignore_index=IGNORE)
    assert loss(x, y).item() == pytest.approx(total / count, abs=1e-10)


def test_conservative_decreases_in_p_t_and_is_bounded_with_finite_gradients():
    z = torch.linspace(-30, 30, 121, dtype=torch.float64).view(1, 1, 1, -1)
    x = torch.cat([torch.zeros_like(z), z], 1).requires_grad_(True)
    y = torch.ones_like(z, dtype=torch.long)  # p_t = sigmoid(z) rises along the row
    values = ConservativeLoss(reduction="none")(x, y).flatten()
    assert torch.all(values[1:] <= values[:-1] + 1e-12)
    assert values.min().item() == pytest.approx(5 * 0.999**2 * math.log(1e-3), abs=1e-9)
    values.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[0, 1, 0, -10:] == 0)  # past the clamp: no gradient


def test_conservative_rejects_bad_arguments():
    with pytest.raises(ValueError, match="base"):
        ConservativeLoss(base=1.0)
    with pytest.raises(ValueError, match="eps"):
        ConservativeLoss(eps=0.0)
    with pytest.raises(ValueError, match="scale"):
        ConservativeLoss(scale=0.0)
