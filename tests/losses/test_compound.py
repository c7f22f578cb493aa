"""Compound losses against MONAI, hand-worked cases and plain re-computations; CompoundLoss's bookkeeping."""

from __future__ import annotations

import math
import warnings

import monai.losses
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from medseg.losses import CompoundLoss, get_loss

from ._case import penalty_map

IGNORE = 255


def random_batch(channels=3, spatial=(5, 6), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, channels, *spatial, generator=g, dtype=torch.float64)
    labels = torch.randint(0, max(channels, 2), (batch, 1, *spatial), generator=g)
    return logits, labels


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).double()


def monai_loss(cls, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(*args, **kwargs)


def with_ignored_voxels(labels: torch.Tensor) -> torch.Tensor:
    labels = labels.clone()
    labels[0, 0, :2] = IGNORE
    labels[1, 0, :, -1] = IGNORE
    return labels


def plain_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Mean over items and classes of 1 − (2Σpg + s)/(Σp + Σg + s), one (item, class) at a time."""
    losses = []
    for b in range(probs.shape[0]):
        for c in range(probs.shape[1]):
            p, g = probs[b, c].flatten(), onehot[b, c].flatten()
            losses.append(1 - (2 * (p * g).sum() + smooth) / (p.sum() + g.sum() + smooth))
    return torch.stack(losses).mean()


# --- dice_ce -----------------------------------------------------------------------------------------------------

DICE_CE_ARGS = [
    {"softmax": True},
    {"softmax": True, "include_background": False, "weight": [0.2, 1.0, 2.0]},
    {"sigmoid": True, "batch": True, "lambda_dice": 0.3, "lambda_ce": 1.7},
    {"softmax": True, "squared_pred": True, "jaccard": True, "reduction": "sum", "label_smoothing": 0.1},
    {"softmax": True, "jaccard": True, "smooth_nr": 1.0, "smooth_dr": 1.0},
]


@pytest.mark.parametrize("kwargs", DICE_CE_ARGS, ids=lambda k: ",".join(k))
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
def test_dice_ce_matches_monai(kwargs, spatial):
    logits, labels = random_batch(spatial=spatial)
    ours = get_loss("dice_ce", **kwargs)(logits, labels)
    monai_kwargs = {**kwargs, "to_onehot_y": True}
    if "weight" in kwargs:
        monai_kwargs["weight"] = torch.tensor(kwargs["weight"], dtype=torch.float64)
    reference = monai_loss(monai.losses.DiceCELoss, **monai_kwargs)(logits, labels)
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_dice_ce_one_hot_target_matches_monai():
    logits, labels = random_batch()
    ours = get_loss("dice_ce", softmax=True)(logits, one_hot(labels, 3))
    reference = monai_loss(monai.losses.DiceCELoss, softmax=True)(logits, one_hot(labels, 3))
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_dice_ce_class_weights_give_one_number_for_both_target_forms():
    # docs/monai_differences.md, "Dice+CE class weights with a one-hot target": MONAI (torch's CE) divides the
    # weighted CE by the summed class weights for a label map but by the voxel count for a one-hot target
    logits, labels = random_batch()
    weight = [0.2, 1.0, 2.0]
    ours = get_loss("dice_ce", softmax=True, weight=weight)
    assert torch.allclose(ours(logits, one_hot(labels, 3)), ours(logits, labels), rtol=1e-12)
    monai_weight = torch.tensor(weight, dtype=torch.float64)
    from_labels = monai_loss(monai.losses.DiceCELoss, softmax=True, to_onehot_y=True, weight=monai_weight)
    from_one_hot = monai_loss(monai.losses.DiceCELoss, softmax=True, weight=monai_weight)
    assert torch.allclose(ours(logits, labels), from_labels(logits, labels), rtol=1e-5)
    assert not torch.allclose(from_one_hot(logits, one_hot(labels, 3)), from_labels(logits, labels), rtol=1e-3)


@pytest.mark.parametrize("weight", [None, [3.0]])
def test_dice_ce_binary_matches_monai_bce_with_pos_weight(weight):
    logits, labels = random_batch(channels=1)
    target = labels.double()
    ours = get_loss("dice_ce", sigmoid=True, weight=weight)(logits, target)
    pos_weight = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    reference = monai_loss(monai.losses.DiceCELoss, sigmoid=True, weight=pos_weight)(logits, target)
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_dice_ce_ignore_index_where_monai_fails():
    logits, labels = random_batch(seed=3)
    labels = with_ignored_voxels(labels)
    with pytest.raises(RuntimeError, match="out of bounds"):
        monai_loss(monai.losses.DiceCELoss, to_onehot_y=True, softmax=True)(logits, labels)

    ours = get_loss("dice_ce", softmax=True, ignore_index=IGNORE)(logits, labels)
    keep = (labels != IGNORE).double()
    clean = torch.where(labels == IGNORE, 0, labels)
    # MONAI's Dice on inputs zeroed at the ignored voxels + torch's CE with ignore_index
    dice = monai.losses.DiceLoss()(logits.softmax(1) * keep, one_hot(clean, 3) * keep)
    ce = F.cross_entropy(logits, labels[:, 0], ignore_index=IGNORE)
    assert torch.allclose(ours, dice + ce, rtol=1e-10, atol=1e-10)


def test_dice_ce_binary_ignore_index_against_plain_formula():
    logits, labels = random_batch(channels=1, seed=4)
    labels = with_ignored_voxels(labels)
    ours = get_loss("dice_ce", sigmoid=True, weight=2.0, ignore_index=IGNORE)(logits, labels)
    keep = labels != IGNORE
    items = [(torch.sigmoid(logits[b][keep[b]]), labels[b][keep[b]].double()) for b in range(2)]
    dice = [1 - (2 * (p * g).sum() + 1e-5) / (p.sum() + g.sum() + 1e-5) for p, g in items]
    p, g = torch.cat([p for p, _ in items]), torch.cat([g for _, g in items])
    bce = -(2.0 * g * torch.log(p) + (1 - g) * torch.log(1 - p)).mean()  # positives weighted by 2 (pos_weight)
    assert torch.allclose(ours, torch.stack(dice).mean() + bce, rtol=1e-10, atol=1e-10)


def test_dice_ce_rejects_bad_arguments():
    with pytest.raises(ValueError, match="reduction"):
        get_loss("dice_ce", reduction="none")
    with pytest.raises(ValueError, match="lambda_ce"):
        get_loss("dice_ce", lambda_ce=-1.0)
    logits, labels = random_batch()
    with pytest.raises(ValueError, match="one weight per class"):
        get_loss("dice_ce", softmax=True, weight=2.0)(logits, labels)


# --- dice_focal --------------------------------------------------------------------------------------------------

DICE_FOCAL_ARGS = [
    {"softmax": True},
    {"sigmoid": True, "gamma": 1.5, "alpha": 0.25, "include_background": False},
    {"softmax": True, "weight": [0.5, 1.0, 2.0], "lambda_dice": 0.7, "lambda_focal": 0.4, "batch": True},
    {"sigmoid": True, "squared_pred": True, "reduction": "none"},
    {"softmax": True, "reduction": "sum", "weight": [0.5, 1.0, 2.0]},  # MONAI's focal sum: spatial means, summed
]


@pytest.mark.parametrize("kwargs", DICE_FOCAL_ARGS, ids=lambda k: ",".join(k))
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
def test_dice_focal_matches_monai(kwargs, spatial):
    logits, labels = random_batch(spatial=spatial)
    ours = get_loss("dice_focal", **kwargs)(logits, labels)
    reference = monai_loss(monai.losses.DiceFocalLoss, to_onehot_y=True, **kwargs)(logits, labels)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference.double(), rtol=1e-5, atol=1e-5)  # MONAI's focal term runs in float32


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dice_focal_softmax_focal_is_monais_softmax_focal(reduction):
    # MONAI's DiceFocalLoss cannot select the softmax focal term; focal_softmax=True adds FocalLoss(use_softmax=True)
    logits, labels = random_batch()
    ours = get_loss("dice_focal", softmax=True, focal_softmax=True, reduction=reduction)(logits, labels)
    dice = monai.losses.DiceLoss(to_onehot_y=True, softmax=True, reduction=reduction)(logits, labels)
    focal = monai_loss(monai.losses.FocalLoss, to_onehot_y=True, use_softmax=True, reduction=reduction)(logits, labels)
    assert torch.allclose(ours, dice + focal.double(), rtol=1e-5, atol=1e-5)


def test_dice_focal_ignore_index_against_plain_formula():
    logits, labels = random_batch(seed=5)
    labels = with_ignored_voxels(labels)
    ours = get_loss("dice_focal", softmax=True, ignore_index=IGNORE)(logits, labels)
    keep = (labels != IGNORE).double()
    g = one_hot(torch.where(labels == IGNORE, 0, labels), 3)
    dice = plain_dice_loss(logits.softmax(1) * keep, g * keep)
    p = torch.sigmoid(logits)
    p_t = g * p + (1 - g) * (1 - p)
    focal = (-((1 - p_t) ** 2) * torch.log(p_t) * keep).sum() / (keep.sum() * 3)  # mean over kept voxels × classes
    assert torch.allclose(ours, dice + focal, rtol=1e-10, atol=1e-10)


# --- combo -------------------------------------------------------------------------------------------------------


def test_combo_hand_worked_binary():
    # one item, one channel of probabilities p = 0.8 0.4 0.1 0.6, target g = 1 1 0 0
    p = torch.tensor([0.8, 0.4, 0.1, 0.6], dtype=torch.float64).view(1, 1, 4)
    g = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64).view(1, 1, 4)
    # β = 0.5: CE terms 0.5·(−ln 0.8, −ln 0.4, −ln 0.9, −ln 0.4) = 0.111572, 0.458145, 0.052680, 0.458145,
    # mean 0.270136; Dice = (2·1.2 + 1e-5) / (1.9 + 2 + 1e-5) = 0.615386, so 1 − Dice = 0.384614
    # Combo = 0.5·0.270136 + 0.5·0.384614 = 0.327375
    assert get_loss("combo")(p, g).item() == pytest.approx(0.3273750, abs=1e-6)
    # β = 0.25 (false positives cost more), α = 0.8: CE terms 0.25·0.223144, 0.25·0.916291, 0.75·0.105361,
    # 0.75·0.916291 → mean 0.262774; Combo = 0.8·0.262774 + 0.2·0.384614 = 0.287142
    assert get_loss("combo", alpha=0.8, beta=0.25)(p, g).item() == pytest.approx(0.2871423, abs=1e-6)


def test_combo_ce_part_is_half_torch_bce_at_beta_one_half():
    logits, labels = random_batch(channels=1)
    target = labels.double()
    ours = get_loss("combo", sigmoid=True, alpha=1.0, beta=0.5)(logits, target)
    assert torch.allclose(ours, 0.5 * F.binary_cross_entropy_with_logits(logits, target), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"include_background": False, "alpha": 0.7, "beta": 0.3}, {"batch": True, "beta": 0.8}],
    ids=["default", "no-background", "batch"],
)
def test_combo_against_plain_recomputation(kwargs):
    logits, labels = random_batch(spatial=(3, 4, 5), seed=6)
    labels = with_ignored_voxels(labels)
    ours = get_loss("combo", softmax=True, ignore_index=IGNORE, **kwargs)(logits, labels)
    alpha, beta = kwargs.get("alpha", 0.5), kwargs.get("beta", 0.5)
    first = 0 if kwargs.get("include_background", True) else 1
    keep = labels[:, 0] != IGNORE
    probs = logits.softmax(1)
    groups = [[0, 1]] if kwargs.get("batch") else [[0], [1]]  # items pooled per Dice/CE evaluation
    values = []
    for items in groups:
        for c in range(first, 3):
            p = torch.cat([probs[b, c][keep[b]] for b in items])
            g = torch.cat([(labels[b, 0][keep[b]] == c).double() for b in items])
            ce = -(beta * g * torch.log(p) + (1 - beta) * (1 - g) * torch.log(1 - p)).mean()
            dice = (2 * (p * g).sum() + 1e-5) / (p.sum() + g.sum() + 1e-5)
            values.append(alpha * ce + (1 - alpha) * (1 - dice))
    assert torch.allclose(ours, torch.stack(values).mean(), rtol=1e-10, atol=1e-10)


def test_combo_rejects_alpha_outside_unit_interval():
    with pytest.raises(ValueError, match="alpha"):
        get_loss("combo", alpha=1.5)


# --- exp_log -----------------------------------------------------------------------------------------------------


def test_exp_log_hand_worked():
    # one item, two classes given as probabilities: p_1 = 0.9 0.6 0.2 0.1 (p_0 = 1 − p_1), labels 1 1 0 0
    p1 = torch.tensor([0.9, 0.6, 0.2, 0.1], dtype=torch.float64)
    probs = torch.stack([1 - p1, p1]).view(1, 2, 4)
    labels = torch.tensor([1, 1, 0, 0]).view(1, 1, 4)
    # Dice with ε = 1: D_1 = (2·1.5 + 1) / (1.8 + 2 + 1) = 0.833333, D_0 = (2·1.7 + 1) / (2.2 + 2 + 1) = 0.846154
    # (−ln D)^0.3: 0.600138 and 0.584598, mean 0.592368
    # frequencies f = (2, 2) → w = √(4/2) = √2 for both; p of the true label: 0.9 0.6 0.8 0.9,
    # (−ln p)^0.3 = 0.509100 0.817489 0.637640 0.509100 → √2 · mean 0.618341 = 0.874454
    # 0.8·0.592368 + 0.2·0.874454 = 0.648785
    assert get_loss("exp_log")(probs, labels).item() == pytest.approx(0.6487852, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"include_background": False, "class_frequency": [70.0, 20.0, 10.0], "gamma_dice": 0.5, "gamma_ce": 1.0}],
    ids=["batch-frequencies", "given-frequencies"],
)
def test_exp_log_against_plain_recomputation(kwargs):
    logits, labels = random_batch(spatial=(3, 4, 5), seed=7)
    labels = with_ignored_voxels(labels)
    ours = get_loss("exp_log", softmax=True, ignore_index=IGNORE, **kwargs)(logits, labels)
    gamma_dice, gamma_ce = kwargs.get("gamma_dice", 0.3), kwargs.get("gamma_ce", 0.3)
    classes = range(0 if kwargs.get("include_background", True) else 1, 3)
    keep = labels[:, 0] != IGNORE
    if "class_frequency" in kwargs:
        frequency = torch.tensor(kwargs["class_frequency"], dtype=torch.float64)
    else:
        frequency = torch.stack([(labels == c).sum() for c in range(3)]).double()
    label_weight = (frequency.sum() / frequency).sqrt()
    probs = logits.softmax(1)
    per_item = []
    for b in range(2):
        lab = labels[b, 0][keep[b]]
        dice_term = 0.0
        for c in classes:
            p, g = probs[b, c][keep[b]], (lab == c).double()
            dice = (2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1)
            dice_term += (-torch.log(dice)) ** gamma_dice / len(classes)
        p_true = probs[b].movedim(0, -1)[keep[b]].gather(1, lab.view(-1, 1))[:, 0]
        counted = torch.tensor([c in classes for c in lab.tolist()], dtype=torch.float64)
        ce_term = (counted * label_weight[lab] * (-torch.log(p_true)) ** gamma_ce).mean()
        per_item.append(0.8 * dice_term + 0.2 * ce_term)
    assert torch.allclose(ours, torch.stack(per_item).mean(), rtol=1e-10, atol=1e-10)


def test_exp_log_rejects_single_channel_and_bad_frequencies():
    logits, labels = random_batch(channels=1)
    with pytest.raises(ValueError, match="two channels"):
        get_loss("exp_log")(torch.sigmoid(logits), labels)
    with pytest.raises(ValueError, match="class_frequency"):
        get_loss("exp_log", class_frequency=[1.0, 0.0, 2.0])
    logits, labels = random_batch()
    with pytest.raises(ValueError, match="class_frequency has 2 entries"):
        get_loss("exp_log", softmax=True, class_frequency=[1.0, 2.0])(logits, labels)


# --- unified_focal -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta,gamma", [(0.7, 0.5), (0.6, 0.2)])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
def test_unified_focal_terms_match_monai_on_binary_probabilities(delta, gamma, channels, spatial):
    g = torch.Generator().manual_seed(8)
    p = 0.05 + 0.9 * torch.rand(2, 1, *spatial, generator=g, dtype=torch.float64)  # inside MONAI's clamp
    labels = torch.randint(0, 2, (2, 1, *spatial), generator=g)
    probs = p if channels == 1 else torch.cat([1 - p, p], 1)
    target = labels.double() if channels == 1 else one_hot(labels, 2)
    args = {"delta": delta, "gamma": gamma, "smooth_nr": 1e-7, "smooth_dr": 1e-7}
    monai_args = {"delta": delta, "gamma": gamma}
    tversky = get_loss("unified_focal", tversky_weight=1.0, **args)(probs, target)
    focal = get_loss("unified_focal", tversky_weight=0.0, **args)(probs, target)
    monai_tversky = monai.losses.AsymmetricUnifiedFocalLoss(weight=0.0, **monai_args)(probs, target)
    monai_focal = monai.losses.AsymmetricUnifiedFocalLoss(weight=1.0, **monai_args)(probs, target)
    assert torch.allclose(tversky, monai_tversky, rtol=1e-5, atol=1e-5)
    # MONAI averages its focal term over the two classes; the paper (and medseg) sums them
    assert torch.allclose(focal, 2 * monai_focal, rtol=1e-5, atol=1e-5)
    mixed = get_loss("unified_focal", tversky_weight=0.3, **args)(probs, target)
    assert torch.allclose(mixed, 0.3 * tversky + 0.7 * focal, rtol=1e-10, atol=1e-12)


def test_unified_focal_sigmoid_equals_probabilities_input():
    logits, labels = random_batch(channels=1)
    from_logits = get_loss("unified_focal", sigmoid=True)(logits, labels)
    assert torch.allclose(from_logits, get_loss("unified_focal")(torch.sigmoid(logits), labels), rtol=1e-10)


@pytest.mark.parametrize("include_background", [True, False])
def test_unified_focal_multiclass_against_plain_recomputation(include_background):
    logits, labels = random_batch(channels=4, spatial=(3, 4, 5), seed=9)
    labels = with_ignored_voxels(labels)
    delta, gamma = 0.6, 0.5
    ours = get_loss("unified_focal", softmax=True, include_background=include_background, ignore_index=IGNORE)
    value = ours(logits, labels)
    keep = labels[:, 0] != IGNORE
    probs = logits.softmax(1)
    classes = range(0 if include_background else 1, 4)
    per_item = []
    for b in range(2):
        lab = labels[b, 0][keep[b]]
        tversky_terms, focal = [], 0.0
        for c in classes:
            p, g = probs[b, c][keep[b]], (lab == c).double()
            tp, fn, fp = (p * g).sum(), ((1 - p) * g).sum(), (p * (1 - g)).sum()
            ti = (tp + 1e-5) / (tp + delta * fn + (1 - delta) * fp + 1e-5)
            if c == 0:  # background: plain Tversky, focal-suppressed CE
                tversky_terms.append(1 - ti)
                focal = focal + ((1 - delta) * (1 - p) ** gamma * -g * torch.log(p)).mean()
            else:  # rare classes: enhanced Tversky, plain CE
                tversky_terms.append((1 - ti) ** (1 - gamma))
                focal = focal + (delta * -g * torch.log(p)).mean()
        per_item.append(0.5 * torch.stack(tversky_terms).mean() + 0.5 * focal)
    assert torch.allclose(value, torch.stack(per_item).mean(), rtol=1e-10, atol=1e-10)


def test_unified_focal_rejects_delta_outside_unit_interval():
    with pytest.raises(ValueError, match="delta"):
        get_loss("unified_focal", delta=1.2)


# --- CompoundLoss ------------------------------------------------------------------------------------------------


class DistanceProbe(nn.Module):
    """An unregistered loss reading aux ``dist``: mean of p·dist; remembers what it was handed."""

    aux_keys = ("dist",)

    def __init__(self) -> None:
        super().__init__()
        self.received: dict[str, torch.Tensor] = {}

    def forward(self, input: torch.Tensor, target: torch.Tensor, **aux: torch.Tensor) -> torch.Tensor:
        self.received = aux
        return (input.softmax(1) * aux["dist"]).mean()


def test_compound_is_the_weighted_sum_of_its_terms():
    logits, labels = random_batch()
    compound = CompoundLoss({"ce": 0.5, "dice": 0.25}, loss_kwargs={"dice": {"softmax": True}})
    ce = get_loss("ce")(logits, labels)
    dice = get_loss("dice", softmax=True)(logits, labels)
    assert torch.allclose(compound(logits, labels), 0.5 * ce + 0.25 * dice, rtol=1e-12, atol=0)
    assert compound.weights == {"ce": 0.5, "dice": 0.25}
    assert set(compound.last_values) == {"ce", "dice"}
    assert torch.equal(compound.last_values["ce"], ce) and torch.equal(compound.last_values["dice"], dice)
    assert not compound.last_values["ce"].requires_grad


def test_compound_weight_change_takes_effect():
    logits, labels = random_batch()
    compound = CompoundLoss({"ce": 1.0, "dice": 1.0}, loss_kwargs={"dice": {"softmax": True}})
    compound.set_weight("dice", 3.0)
    compound.set_weight("ce", 0.0)
    assert compound.weights == {"ce": 0.0, "dice": 3.0}
    x = logits.clone().requires_grad_(True)
    value = compound(x, labels)
    assert torch.allclose(value, 3.0 * get_loss("dice", softmax=True)(logits, labels), rtol=1e-12, atol=0)
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_compound_routes_aux_only_to_terms_that_read_it():
    logits, labels = random_batch()
    dist = penalty_map(one_hot(labels, 3), labels)["dist"]
    probe = DistanceProbe()
    compound = CompoundLoss({"dice": 1.0, "dpce": 0.5, "probe": 2.0}, {"dice": {"softmax": True}}, {"probe": probe})
    assert compound.aux_keys == ("dist",)
    # CE-like and Dice terms take no aux: handing them `dist` would raise a TypeError
    value = compound(logits, labels, dist=dist)
    expected = (
        get_loss("dice", softmax=True)(logits, labels)
        + 0.5 * get_loss("dpce")(logits, labels, dist=dist)
        + 2.0 * (logits.softmax(1) * dist).mean()
    )
    assert torch.allclose(value, expected, rtol=1e-12, atol=0)
    assert set(probe.received) == {"dist"} and probe.received["dist"] is dist
    with pytest.raises(ValueError, match="read by no term"):
        compound(logits, labels, dist=dist, weight_map=dist)


def test_compound_rejects_bad_configuration():
    with pytest.raises(ValueError, match=r"did you mean.*dice"):
        CompoundLoss({"dcie": 1.0})
    with pytest.raises(ValueError, match="finite number >= 0"):
        CompoundLoss({"ce": -0.5})
    with pytest.raises(ValueError, match="no weight"):
        CompoundLoss({"ce": 1.0}, loss_kwargs={"dice": {"softmax": True}})
    with pytest.raises(ValueError, match="at least one term"):
        CompoundLoss({})
    compound = CompoundLoss({"ce": 1.0})
    with pytest.raises(ValueError, match="no term 'dice'"):
        compound.set_weight("dice", 1.0)
    with pytest.raises(ValueError, match="finite number >= 0"):
        compound.set_weight("ce", math.nan)
    logits, labels = random_batch()
    with pytest.raises(ValueError, match="scalar terms"):
        CompoundLoss({"dice": 1.0}, loss_kwargs={"dice": {"reduction": "none"}})(logits, labels)
