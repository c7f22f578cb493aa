"""Region losses: MONAI parity where MONAI has the loss, hand-worked cases and plain re-computations otherwise."""

from __future__ import annotations

import math

import monai.losses
import numpy as np
import pytest
import torch
from scipy.stats import multivariate_t

from medseg.losses import (
    AsymmetricSimilarityLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    GeneralizedWassersteinDiceLoss,
    JaccardLoss,
    LogCoshDiceLoss,
    PenaltyGeneralizedDiceLoss,
    RobustTLoss,
    SensitivitySpecificityLoss,
    TverskyLoss,
    get_loss,
)

IGNORE = 255
TOL = 1e-5
SPATIAL = [(6, 7), (4, 5, 3)]
SPATIAL_IDS = ["2d", "3d"]


def batch(spatial=(6, 7), classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, classes, *spatial, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (2, 1, *spatial), generator=g)
    return x, y


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0].long(), classes).movedim(-1, 1).double()


def with_ignored(y: torch.Tensor) -> torch.Tensor:
    y = y.clone()
    y[0, 0, :2] = IGNORE
    y[1, 0, ..., -1] = IGNORE
    return y


def close(ours: torch.Tensor, ref: torch.Tensor) -> bool:
    return ours.numel() == ref.numel() and torch.allclose(ours.flatten().double(), ref.flatten().double(), atol=TOL)


# The two-class 2x2 example used by the hand-worked cases: probabilities given directly (no activation).
#   voxel:        0    1    2    3
#   label:        0    0    1    1
#   p(class 0):   1   .5    0    0
#   p(class 1):   0   .5    1    1
# class 0: TP = 1.5, FP = 0,   FN = 0.5 (sum p = 1.5, sum g = 2)
# class 1: TP = 2,   FP = 0.5, FN = 0   (sum p = 2.5, sum g = 2)
HAND_PROBS = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.5, 1.0, 1.0]], dtype=torch.float64).view(1, 2, 2, 2)
HAND_LABELS = torch.tensor([0, 0, 1, 1]).view(1, 1, 2, 2)
NO_SMOOTHING = {"smooth_nr": 0.0, "smooth_dr": 0.0}


# ---------------------------------------------------------------------------------------------- generalized Dice
GDL_KWARGS = [
    {"softmax": True},
    {"softmax": True, "include_background": False},
    {"sigmoid": True},
    {"softmax": True, "batch": True},
    {"softmax": True, "w_type": "simple", "reduction": "sum"},
    {"softmax": True, "w_type": "uniform", "reduction": "none"},
]


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("kwargs", GDL_KWARGS)
@pytest.mark.parametrize("absent", [False, True], ids=["all_present", "class3_absent"])
def test_generalized_dice_matches_monai(spatial, kwargs, absent):
    x, y = batch(spatial)
    if absent:
        y = y.clamp(max=2)  # class 3 in no target: MONAI gives it the largest finite weight
    ref = monai.losses.GeneralizedDiceLoss(to_onehot_y=True, **kwargs)(x, y)
    assert close(GeneralizedDiceLoss(**kwargs)(x, y), ref)
    assert close(GeneralizedDiceLoss(**kwargs)(x, one_hot(y, 4)), ref)


def test_generalized_dice_absent_class_gets_largest_finite_weight():
    # one item, 3 classes over 4 voxels, class 2 absent from the target but predicted at voxel 3
    probs = torch.tensor([[0.8, 0.1, 0.2, 0.0], [0.1, 0.9, 0.8, 0.5], [0.1, 0.0, 0.0, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1])
    # volumes 1 and 3 -> weights 1 and 1/9; class 2 takes the largest finite weight, 1 (not 1/eps^2 = 1e20)
    # TP: 0.8, 2.2, 0;  2TP + FP + FN = sum p + sum g: 2.1, 5.3, 0.6
    # L = 1 - 2 (1*0.8 + 2.2/9 + 1*0) / (1*2.1 + 5.3/9 + 1*0.6) = 1 - 2.08889 / 3.28889 = 0.364865
    loss = GeneralizedDiceLoss(**NO_SMOOTHING)(probs.view(1, 3, 2, 2), labels.view(1, 1, 2, 2))
    assert math.isclose(loss.item(), 1 - (2 * (0.8 + 2.2 / 9)) / (2.1 + 5.3 / 9 + 0.6), abs_tol=1e-12)
    assert math.isclose(loss.item(), 0.364865, abs_tol=1e-6)


def test_generalized_dice_item_with_no_class_present_scores_zero():
    x, _ = batch()
    y = torch.zeros(2, 1, 6, 7, dtype=torch.long)  # background only, background excluded: every weight is 0
    loss = GeneralizedDiceLoss(softmax=True, include_background=False)(x, y)
    assert loss.item() == 0.0


@pytest.mark.parametrize("loss_cls", [GeneralizedDiceLoss, GeneralizedWassersteinDiceLoss])
def test_ignore_index_equals_monai_on_the_kept_voxels(loss_cls):
    # MONAI's GDL and GWDL have no ignore_index; both flatten the spatial dims, so an item's kept voxels can be fed
    # to MONAI as a (1, C, n) image: ignoring voxels must equal cropping them out.
    x, y = batch(classes=3, seed=4)
    y = with_ignored(y)
    matrix = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]], dtype=np.float32)
    if loss_cls is GeneralizedDiceLoss:
        ours = loss_cls(softmax=True, ignore_index=IGNORE, reduction="none")
        ref = monai.losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True)
    else:
        ours = loss_cls(matrix, ignore_index=IGNORE, reduction="none")
        ref = monai.losses.GeneralizedWassersteinDiceLoss(matrix)
    per_item = ours(x, y).flatten()
    for b in range(2):
        keep = y[b, 0] != IGNORE
        kept_x = x[b][:, keep].unsqueeze(0)
        kept_y = y[b, 0][keep].view(1, 1, -1)
        assert torch.allclose(per_item[b], ref(kept_x, kept_y).flatten()[0].double(), atol=TOL)


# ------------------------------------------------------------------------------------------------- penalty GDL
def test_penalty_gdl_hand_worked():
    # volumes 2 and 2 -> w = 1/4 each; sum w TP = (1.5 + 2)/4 = 0.875; sum w (sum p + sum g) = (3.5 + 4.5)/4 = 2
    # L_GD = 1 - 2*0.875/2 = 0.125;  penalty: 0.125 / (1 + 2.5 * (1 - 0.125)) = 0.125 / 3.1875 = 0.0392157
    loss = PenaltyGeneralizedDiceLoss(**NO_SMOOTHING)(HAND_PROBS, HAND_LABELS)
    assert math.isclose(loss.item(), 0.125 / 3.1875, abs_tol=1e-12)


@pytest.mark.parametrize("kwargs", [{"softmax": True}, {"softmax": True, "batch": True}, {"sigmoid": True, "k": 1.0}])
def test_penalty_gdl_is_the_penalty_of_monai_generalized_dice(kwargs):
    x, y = batch(seed=5)
    k = kwargs.get("k", 2.5)
    monai_kwargs = {key: value for key, value in kwargs.items() if key != "k"}
    per_item = monai.losses.GeneralizedDiceLoss(to_onehot_y=True, reduction="none", **monai_kwargs)(x, y)
    expected = (per_item / (1 + k * (1 - per_item))).mean()
    assert close(PenaltyGeneralizedDiceLoss(**kwargs)(x, y), expected)


# ------------------------------------------------------------------------------------------------ log-cosh Dice
def test_log_cosh_dice_hand_worked():
    # Dice losses: class 0: 1 - 3/(3 + 0 + 0.5) = 1/7; class 1: 1 - 4/(4 + 0.5 + 0) = 1/9
    # log cosh(1/7) = 0.0101696, log cosh(1/9) = 0.0061602; mean = 0.0081649
    loss = LogCoshDiceLoss(**NO_SMOOTHING)(HAND_PROBS, HAND_LABELS)
    assert math.isclose(loss.item(), (math.log(math.cosh(1 / 7)) + math.log(math.cosh(1 / 9))) / 2, abs_tol=1e-12)
    assert math.isclose(loss.item(), 0.0081649, abs_tol=1e-7)


def plain_soft_counts(probs: torch.Tensor, onehot: torch.Tensor, item: int, cls: int) -> tuple[float, float, float]:
    """TP, FP, FN of one item and class by explicit sums over its voxels."""
    p, g = probs[item, cls].flatten().tolist(), onehot[item, cls].flatten().tolist()
    tp = sum(pi * gi for pi, gi in zip(p, g, strict=True))
    fp = sum(pi * (1 - gi) for pi, gi in zip(p, g, strict=True))
    fn = sum((1 - pi) * gi for pi, gi in zip(p, g, strict=True))
    return tp, fp, fn


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
def test_log_cosh_dice_matches_plain_recomputation(spatial):
    x, y = batch(spatial, seed=6)
    probs, onehot = torch.softmax(x, 1), one_hot(y, 4)
    s = 1e-5
    terms = []
    for b in range(2):
        for c in range(4):
            tp, fp, fn = plain_soft_counts(probs, onehot, b, c)
            terms.append(math.log(math.cosh(1 - (2 * tp + s) / (2 * tp + fp + fn + s))))
    assert math.isclose(LogCoshDiceLoss(softmax=True)(x, y).item(), sum(terms) / len(terms), abs_tol=TOL)


# ------------------------------------------------------------------------------------------------------- GWDL
GWDL_MATRIX = np.array(
    [[0.0, 2.0, 2.0, 2.0], [2.0, 0.0, 1.0, 1.5], [2.0, 1.0, 0.0, 1.0], [2.0, 1.5, 1.0, 0.0]], dtype=np.float32
)  # max 2: both sides divide it by 2


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("mode", ["default", "GDL"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target", ["random", "class3_absent", "background_only"])
def test_gwdl_matches_monai(spatial, mode, reduction, target):
    x, y = batch(spatial, seed=7)
    if target == "class3_absent":
        y = y.clamp(max=2)
    elif target == "background_only":
        y = torch.zeros_like(y)
    ref = monai.losses.GeneralizedWassersteinDiceLoss(GWDL_MATRIX, weighting_mode=mode, reduction=reduction)(x, y)
    ours = GeneralizedWassersteinDiceLoss(GWDL_MATRIX, weighting_mode=mode, reduction=reduction)
    assert close(ours(x, y), ref)
    assert close(ours(x, one_hot(y, 4)), ref)


def test_gwdl_perfect_prediction_scores_zero_and_scale_of_matrix_does_not_matter():
    logits = 1000.0 * torch.eye(3).view(1, 3, 3, 1)  # voxel i predicts class i with certainty
    labels = torch.arange(3).view(1, 1, 3, 1)
    matrix = [[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]]
    assert GeneralizedWassersteinDiceLoss(matrix)(logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    x, y = batch(classes=3, seed=8)
    scaled = [[3.0 * v for v in row] for row in matrix]
    assert torch.allclose(GeneralizedWassersteinDiceLoss(matrix)(x, y), GeneralizedWassersteinDiceLoss(scaled)(x, y))


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]], "square"),
        ([[0.0]], "square"),
        ([[0.0, -1.0], [1.0, 0.0]], "non-negative"),
        ([[0.5, 1.0], [1.0, 0.0]], "zero diagonal"),
        ([[0.0, 0.0], [0.0, 0.0]], "all zero"),
    ],
)
def test_gwdl_rejects_bad_distance_matrix(matrix, message):
    with pytest.raises(ValueError, match=message):
        GeneralizedWassersteinDiceLoss(matrix)


def test_gwdl_rejects_input_with_other_class_count():
    x, y = batch(classes=4)
    with pytest.raises(ValueError, match="channels"):
        GeneralizedWassersteinDiceLoss([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])(x, y)


# ---------------------------------------------------------------------------------------------------- Jaccard
JACCARD_KWARGS = [
    {"softmax": True},
    {"softmax": True, "squared_pred": True},
    {"softmax": True, "include_background": False, "reduction": "none"},
    {"sigmoid": True, "batch": True},
    {"softmax": True, "weight": [0.5, 1.0, 2.0, 3.0], "reduction": "sum"},
    {"softmax": True, "smooth_nr": 0.0, "smooth_dr": 1e-3},
]


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("kwargs", JACCARD_KWARGS)
@pytest.mark.parametrize("ignore", [False, True])
def test_jaccard_matches_monai_dice_jaccard_with_doubled_smoothing(spatial, kwargs, ignore):
    x, y = batch(spatial, seed=9)
    extra = {}
    if ignore:
        y, extra = with_ignored(y), {"ignore_index": IGNORE}
    monai_kwargs = {**kwargs, **extra}
    monai_kwargs["smooth_nr"] = 2 * kwargs.get("smooth_nr", 1e-5)
    monai_kwargs["smooth_dr"] = 2 * kwargs.get("smooth_dr", 1e-5)
    ref = monai.losses.DiceLoss(to_onehot_y=True, jaccard=True, **monai_kwargs)(x, y)
    assert close(JaccardLoss(**kwargs, **extra)(x, y), ref)


def test_jaccard_hand_worked():
    # class 0: 1 - 1.5/(1.5 + 0 + 0.5) = 0.25; class 1: 1 - 2/(2 + 0.5 + 0) = 0.2; mean 0.225
    assert math.isclose(JaccardLoss(**NO_SMOOTHING)(HAND_PROBS, HAND_LABELS).item(), 0.225, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------------- Tversky
TVERSKY_KWARGS = [
    {"softmax": True},
    {"softmax": True, "alpha": 0.3, "beta": 0.7},
    {"softmax": True, "alpha": 0.9, "beta": 0.1, "include_background": False},
    {"sigmoid": True, "batch": True, "alpha": 0.2, "beta": 0.6},
    {"softmax": True, "reduction": "none"},
]


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("kwargs", TVERSKY_KWARGS)
@pytest.mark.parametrize("ignore", [False, True])
def test_tversky_matches_monai(spatial, kwargs, ignore):
    x, y = batch(spatial, seed=10)
    extra = {}
    if ignore:
        y, extra = with_ignored(y), {"ignore_index": IGNORE}
    ref = monai.losses.TverskyLoss(to_onehot_y=True, **kwargs, **extra)(x, y)
    assert close(TverskyLoss(**kwargs, **extra)(x, y), ref)


def test_tversky_alpha_weighs_false_positives():
    # only class 1 has FP (0.5), only class 0 has FN (0.5)
    # alpha=1, beta=0: class 0: 1 - 1.5/1.5 = 0;  class 1: 1 - 2/(2 + 0.5) = 0.2;  mean 0.1
    # alpha=0, beta=1: class 0: 1 - 1.5/(1.5 + 0.5) = 0.25;  class 1: 1 - 2/2 = 0;  mean 0.125
    fp_only = TverskyLoss(alpha=1.0, beta=0.0, **NO_SMOOTHING)(HAND_PROBS, HAND_LABELS)
    fn_only = TverskyLoss(alpha=0.0, beta=1.0, **NO_SMOOTHING)(HAND_PROBS, HAND_LABELS)
    assert math.isclose(fp_only.item(), 0.1, abs_tol=1e-12)
    assert math.isclose(fn_only.item(), 0.125, abs_tol=1e-12)


def test_tversky_weight_scales_each_class():
    x, y = batch(seed=11)
    weight = [0.5, 1.0, 2.0, 3.0]
    per_class = monai.losses.TverskyLoss(softmax=True, to_onehot_y=True, reduction="none")(x, y)
    expected = (per_class * torch.tensor(weight, dtype=torch.float64)).mean()
    assert close(TverskyLoss(softmax=True, weight=weight)(x, y), expected)


# ---------------------------------------------------------------------------------------------- focal Tversky
def test_focal_tversky_hand_worked():
    # alpha = 0.3 (FP), beta = 0.7 (FN), 1/gamma = 0.75
    # class 0: TI = 1.5 / (1.5 + 0.3*0 + 0.7*0.5) = 1.5/1.85 = 0.810811 -> (0.189189)^0.75 = 0.286861
    # class 1: TI = 2 / (2 + 0.3*0.5 + 0.7*0) = 2/2.15 = 0.930233   -> (0.069767)^0.75 = 0.135750
    # mean of the per-class powers: 0.211306 (the power of the mean Tversky loss would be 0.225826)
    loss = FocalTverskyLoss(**NO_SMOOTHING)(HAND_PROBS, HAND_LABELS)
    assert math.isclose(loss.item(), ((1 - 1.5 / 1.85) ** 0.75 + (1 - 2 / 2.15) ** 0.75) / 2, abs_tol=1e-12)
    assert math.isclose(loss.item(), 0.211306, abs_tol=1e-6)


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("include_background", [True, False])
def test_focal_tversky_matches_plain_recomputation(spatial, include_background):
    x, y = batch(spatial, seed=12)
    probs, onehot = torch.softmax(x, 1), one_hot(y, 4)
    s = 1e-5
    terms = []
    for b in range(2):
        for c in range(0 if include_background else 1, 4):
            tp, fp, fn = plain_soft_counts(probs, onehot, b, c)
            terms.append((1 - (tp + s) / (tp + 0.3 * fp + 0.7 * fn + s)) ** 0.75)
    ours = FocalTverskyLoss(softmax=True, include_background=include_background)(x, y)
    assert math.isclose(ours.item(), sum(terms) / len(terms), abs_tol=TOL)


def test_focal_tversky_with_gamma_one_is_monai_tversky():
    x, y = batch(seed=13)
    ref = monai.losses.TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)(x, y)
    assert close(FocalTverskyLoss(softmax=True, gamma=1.0)(x, y), ref)


# ----------------------------------------------------------------------------------------- asymmetric similarity
@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"softmax": True},
        {"softmax": True, "beta": 2.0, "include_background": False},
        {"sigmoid": True, "beta": 0.5, "batch": True},
        {"softmax": True, "ignore_index": IGNORE},
    ],
)
def test_asym_similarity_matches_monai_tversky(spatial, kwargs):
    x, y = batch(spatial, seed=14)
    if "ignore_index" in kwargs:
        y = with_ignored(y)
    beta = kwargs.pop("beta", 1.5)
    ref = monai.losses.TverskyLoss(to_onehot_y=True, alpha=1 / (1 + beta**2), beta=beta**2 / (1 + beta**2), **kwargs)(
        x, y
    )
    assert close(AsymmetricSimilarityLoss(beta=beta, **kwargs)(x, y), ref)


def test_asym_similarity_is_one_minus_f_beta_on_hard_predictions():
    # binary, 8 voxels: TP = 2, FP = 1, FN = 3;  F_beta = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP)
    # b = 1.5: 3.25*2 / (3.25*2 + 2.25*3 + 1) = 6.5 / 14.25 = 0.456140 -> loss 0.543860
    pred = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.float64).view(1, 1, 2, 4)
    true = torch.tensor([1, 1, 0, 1, 1, 1, 0, 0], dtype=torch.float64).view(1, 1, 2, 4)
    loss = AsymmetricSimilarityLoss(**NO_SMOOTHING)(pred, true)
    assert math.isclose(loss.item(), 1 - 6.5 / 14.25, abs_tol=1e-12)


# ---------------------------------------------------------------------------------- sensitivity-specificity
def test_sens_spec_hand_worked():
    # squared errors (g - p)^2 are 0.25 at voxel 1 for both classes, 0 elsewhere
    # class 0: positives {0, 1}: 0.25/2 = 0.125; negatives {2, 3}: 0/2 = 0       -> 0.05*0.125 + 0.95*0 = 0.00625
    # class 1: positives {2, 3}: 0/2 = 0;        negatives {0, 1}: 0.25/2 = 0.125 -> 0.05*0 + 0.95*0.125 = 0.11875
    # mean 0.0625
    loss = SensitivitySpecificityLoss(smooth_dr=0.0)(HAND_PROBS, HAND_LABELS)
    assert math.isclose(loss.item(), 0.0625, abs_tol=1e-12)


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_sens_spec_matches_plain_recomputation(spatial, batch_dice, ignore):
    x, y = batch(spatial, seed=15)
    if ignore:
        y = with_ignored(y)
    probs = torch.softmax(x, 1)
    keep = (y[:, 0] != IGNORE).double()
    onehot = one_hot(torch.where(y == IGNORE, 0, y), 4) * keep.unsqueeze(1)
    r, s = 0.05, 1e-5
    groups = [[0, 1]] if batch_dice else [[0], [1]]
    terms = []
    for items in groups:
        for c in range(4):
            miss_num = miss_den = alarm_num = alarm_den = 0.0
            for b in items:
                for p, g, k in zip(
                    probs[b, c].flatten().tolist(),
                    onehot[b, c].flatten().tolist(),
                    keep[b].flatten().tolist(),
                    strict=True,
                ):
                    if k == 0:
                        continue
                    err = (g - p) ** 2
                    miss_num, miss_den = miss_num + err * g, miss_den + g
                    alarm_num, alarm_den = alarm_num + err * (1 - g), alarm_den + (1 - g)
            terms.append(r * miss_num / (miss_den + s) + (1 - r) * alarm_num / (alarm_den + s))
    ours = SensitivitySpecificityLoss(softmax=True, batch=batch_dice, ignore_index=IGNORE if ignore else None)(x, y)
    assert math.isclose(ours.item(), sum(terms) / len(terms), abs_tol=TOL)


# ------------------------------------------------------------------------------------------------ Robust T-Loss
def test_t_loss_hand_worked():
    # one channel, D = 2 voxels, p = (0, 1), g = (1, 1): |delta|^2 = 1;  nu = 0 -> dof = e^0 + 1e-8 ~ 1 (Cauchy)
    # lgamma(1/2) - lgamma(3/2) = log(sqrt(pi)) - log(sqrt(pi)/2) = log 2
    # + D/2 log(pi * 1) = log pi;  + (1 + 2)/2 * log(1 + 1/1) = 1.5 log 2
    # total = 2.5 log 2 + log pi = 1.732868 + 1.144730 = 2.877598
    probs = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    target = torch.ones(1, 1, 1, 2, dtype=torch.float64)
    loss = RobustTLoss(nu=0.0).double()(probs, target)
    assert math.isclose(loss.item(), 2.5 * math.log(2) + math.log(math.pi), abs_tol=1e-7)
    assert math.isclose(loss.item(), 2.877598, abs_tol=1e-6)


@pytest.mark.parametrize("spatial", [(4, 4), (3, 5, 2)], ids=SPATIAL_IDS)
@pytest.mark.parametrize("nu", [1.0, -0.5, 3.0])
@pytest.mark.parametrize("ignore", [False, True])
def test_t_loss_matches_scipy_multivariate_t(spatial, nu, ignore):
    # one instance, any patch size: D is the number of voxels that take part, counted at run time
    x, y = batch(spatial, classes=3, seed=16)
    if ignore:
        y = with_ignored(y)
    probs = torch.softmax(x, 1)
    nlls = []
    for b in range(2):
        keep = (y[b, 0] != IGNORE).flatten()
        for c in range(3):
            p = probs[b, c].flatten()[keep].numpy()
            g = (y[b, 0].flatten()[keep] == c).double().numpy()
            student = multivariate_t(loc=g, shape=np.eye(len(g)), df=math.exp(nu) + 1e-8)
            nlls.append(-student.logpdf(p))
    ours = RobustTLoss(softmax=True, nu=nu, ignore_index=IGNORE if ignore else None).double()(x, y)
    assert math.isclose(ours.item(), float(np.mean(nlls)), rel_tol=1e-9, abs_tol=1e-7)


def test_t_loss_nu_is_a_parameter_the_optimizer_updates():
    loss = get_loss("t_loss", softmax=True)
    assert [name for name, _ in loss.named_parameters()] == ["nu"]
    x, y = batch((5, 5), classes=3, seed=17)
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.1)
    loss(x.float(), y).backward()
    assert loss.nu.grad is not None and loss.nu.grad != 0
    optimizer.step()
    assert loss.nu.item() != 1.0


# ------------------------------------------------------------------------------------------ shared behaviours
PER_CLASS = ["jaccard", "tversky", "focal_tversky", "asym_similarity", "log_cosh_dice", "sens_spec", "t_loss"]
PER_ITEM = ["generalized_dice", "penalty_gdl"]
loss_names = {"DiceLoss": "dice", "GeneralizedDiceLoss": "generalized_dice", "TverskyLoss": "tversky"}


@pytest.mark.parametrize("name", [n for n in PER_CLASS if n != "tversky"] + PER_ITEM)
@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
def test_reduction_none_broadcasts_against_the_input(name, spatial):
    x, y = batch(spatial, classes=3)
    loss = get_loss(name, reduction="none", softmax=True)(x, y)
    classes = 3 if name in PER_CLASS else 1
    assert loss.shape == (2, classes, *[1] * len(spatial))
    assert torch.allclose(loss.mean(), get_loss(name, softmax=True)(x, y))


@pytest.mark.parametrize("batch_reduce", [False, True], ids=["per_item", "batch"])
@pytest.mark.parametrize("name", ["DiceLoss", "GeneralizedDiceLoss", "TverskyLoss"])
def test_reduction_none_has_monais_shapes(name, batch_reduce):
    # MONAI: Dice (B, C, 1, 1), batch (C, 1, 1); generalized Dice (B, 1, 1, 1), batch (1, 1, 1); Tversky (B, C), (C,)
    x, y = batch((4, 5), classes=3)
    kwargs = {"softmax": True, "batch": batch_reduce, "reduction": "none"}
    ours = get_loss(loss_names[name], **kwargs)(x, y)
    ref = getattr(monai.losses, name)(to_onehot_y=True, **kwargs)(x, y)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=TOL)


def test_gwdl_reduction_none_has_monais_shape():
    x, y = batch((4, 5), classes=3)
    matrix = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    gwdl = GeneralizedWassersteinDiceLoss(matrix, reduction="none")(x, y)
    assert gwdl.shape == monai.losses.GeneralizedWassersteinDiceLoss(matrix, reduction="none")(x, y).shape == (2,)


@pytest.mark.parametrize("name", ["jaccard", "tversky", "focal_tversky", "asym_similarity", "log_cosh_dice"])
def test_class_absent_from_target_and_prediction_scores_zero(name):
    # class 2 is in no label and gets probability ~e^-40: an overlap loss must give it (about) 0, not 1 or NaN
    _, y = batch(classes=3, seed=18)
    y = y.clamp(max=1)
    logits = 20.0 * (2 * one_hot(y, 3) - 1)
    per_class = get_loss(name, softmax=True, reduction="none")(logits, y).flatten(1)
    assert torch.all(per_class[:, 2].abs() < 1e-4), per_class
