"""Soft (probabilistic) targets: accepted where the loss's formula holds for them, refused by name elsewhere, and
MONAI's numbers (``soft_label``, soft targets without it) for the classes MONAI has."""

from __future__ import annotations

import inspect
import warnings

import monai.losses
import pytest
import torch

from medseg.losses import get_loss, list_losses, loss_info

from .cases import CASES
from .test_properties import call, one_hot, random_batch

#: losses whose formula holds for targets in [0, 1]; the others read each voxel's class and need hard labels
SOFT = {
    "dice",
    "jaccard",
    "tversky",
    "focal_tversky",
    "asym_similarity",
    "generalized_dice",
    "penalty_gdl",
    "log_cosh_dice",
    "sens_spec",
    "t_loss",
    "ce",
    "balanced_ce",
    "focal",
    "dice_ce",
    "dice_focal",
    "combo",
    "unified_focal",
}
NAMES = sorted(CASES)


def soft_target(labels: torch.Tensor, num_classes: int, smoothing: float = 0.2) -> torch.Tensor:
    """Label smoothing: each voxel's distribution puts 1 − ε on its class and ε spread over all classes."""
    return one_hot(labels, num_classes) * (1 - smoothing) + smoothing / num_classes


def test_the_soft_losses_are_the_registered_ones_that_say_so():
    assert {info.name for info in list_losses() if getattr(info.cls, "accepts_soft_target", False)} == SOFT


@pytest.mark.parametrize("name", NAMES)
def test_soft_target_accepted_or_refused_by_name(name):
    case = CASES[name]
    logits, labels = random_batch(case)
    loss = get_loss(name, **case.kwargs).double()
    target = soft_target(labels, case.num_classes)
    if name in SOFT:
        x = logits.clone().requires_grad_(True)
        value = call(loss, name, x, target)
        assert value.ndim == 0 and torch.isfinite(value)
        value.backward()
        assert torch.isfinite(x.grad).all()
    else:
        with pytest.raises(ValueError, match=r"needs hard labels.*Losses that take soft targets: .*dice"):
            call(loss, name, logits, target)


@pytest.mark.parametrize("name", sorted(SOFT))
def test_soft_target_at_zero_smoothing_is_the_hard_target(name):
    case = CASES[name]
    logits, labels = random_batch(case, seed=3)
    loss = get_loss(name, **case.kwargs).double()
    hard = call(loss, name, logits, labels)
    assert torch.allclose(call(loss, name, logits, soft_target(labels, case.num_classes, 0.0)), hard)
    assert not torch.allclose(call(loss, name, logits, soft_target(labels, case.num_classes, 0.3)), hard)


def soft_batch(channels: int = 3, spatial=(5, 6), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, channels, *spatial, generator=g, dtype=torch.float64)
    target = torch.softmax(2 * torch.randn(2, channels, *spatial, generator=g, dtype=torch.float64), 1)
    return logits, target


MONAI_SOFT = [
    ("dice", "DiceLoss", {"softmax": True}),
    ("dice", "DiceLoss", {"softmax": True, "soft_label": True}),
    ("dice", "DiceLoss", {"sigmoid": True, "soft_label": True, "batch": True, "reduction": "none"}),
    ("dice", "DiceLoss", {"softmax": True, "soft_label": True, "squared_pred": True}),
    ("dice", "DiceLoss", {"softmax": True, "soft_label": True, "jaccard": True, "smooth_nr": 1.0, "smooth_dr": 1.0}),
    ("generalized_dice", "GeneralizedDiceLoss", {"softmax": True}),
    ("generalized_dice", "GeneralizedDiceLoss", {"softmax": True, "soft_label": True, "w_type": "simple"}),
    ("tversky", "TverskyLoss", {"softmax": True, "alpha": 0.3, "beta": 0.7}),
    ("tversky", "TverskyLoss", {"softmax": True, "soft_label": True, "include_background": False}),
    ("focal", "FocalLoss", {}),
    ("focal", "FocalLoss", {"use_softmax": True, "gamma": 1.5, "reduction": "none"}),
    ("dice_ce", "DiceCELoss", {"softmax": True, "label_smoothing": 0.1}),
    ("dice_focal", "DiceFocalLoss", {"softmax": True, "alpha": 0.25}),
]


@pytest.mark.parametrize(("name", "monai_name", "kwargs"), MONAI_SOFT, ids=lambda v: str(v))
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
def test_soft_targets_match_monai(name, monai_name, kwargs, spatial):
    logits, target = soft_batch(spatial=spatial)
    ours = get_loss(name, **kwargs)(logits, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = getattr(monai.losses, monai_name)(**kwargs)(logits, target)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference.double(), rtol=1e-5, atol=1e-6)


SOFT_LABEL = [
    "dice",
    "generalized_dice",
    "tversky",
    "jaccard",
    "log_cosh_dice",
    "focal_tversky",
    "asym_similarity",
    "penalty_gdl",
]


def test_soft_label_is_offered_by_every_overlap_loss_with_tp_fp_fn():
    assert {i.name for i in list_losses() if "soft_label" in inspect.signature(i.cls.__init__).parameters} == set(
        SOFT_LABEL
    )


@pytest.mark.parametrize("name", SOFT_LABEL)
def test_soft_label_scores_zero_when_prediction_equals_soft_target(name):
    # Wang & Blaschko's point: with soft targets only the soft_label form reaches 0 at p = g
    _, target = soft_batch(seed=1)
    smoothing = {"smooth_nr": 0.0, "smooth_dr": 1e-12}
    assert get_loss(name, soft_label=True, **smoothing)(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert get_loss(name, soft_label=False, **smoothing)(target, target).item() > 1e-3


@pytest.mark.parametrize("name", SOFT_LABEL)
def test_soft_label_changes_nothing_for_hard_targets(name):
    logits, labels = random_batch(CASES[name], seed=4)
    hard = get_loss(name, softmax=True)(logits, labels)
    assert torch.allclose(get_loss(name, softmax=True, soft_label=True)(logits, labels), hard, rtol=1e-10, atol=1e-12)


def test_dice_ce_soft_binary_target_with_pos_weight_is_torchs_bce():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 4, 5, generator=g, dtype=torch.float64)
    target = torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64)
    ours = get_loss("dice_ce", sigmoid=True, weight=[3.0], lambda_dice=0.0)(logits, target)
    pos_weight = torch.tensor([3.0], dtype=torch.float64)
    reference = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
    assert torch.allclose(ours, reference, rtol=1e-12)


def test_hard_label_loss_names_itself_and_the_alternatives():
    _, target = soft_batch()
    matrix = [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match=r"'gwdl' \(GeneralizedWassersteinDiceLoss\) needs hard labels") as info:
        get_loss("gwdl", dist_matrix=matrix)(target, target)
    for name in SOFT:
        assert name in str(info.value)
    assert loss_info("gwdl").cls.accepts_soft_target is False


def test_values_outside_the_unit_interval_are_refused_even_where_soft_targets_are_taken():
    logits, target = soft_batch()
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        get_loss("dice", softmax=True)(logits, 1.5 * target)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        get_loss("dice", softmax=True)(logits, target - 0.5)


def test_focal_alpha_per_class_is_interpolated_for_soft_targets():
    # docs/monai_differences.md, "Soft targets in two corners": α_c g + (1 - g), MONAI's α_c only where g == 1
    logits, target = soft_batch()
    alpha = [0.2, 0.5, 0.9]
    x, g = logits, target
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, g, reduction="none")
    modulating = torch.sigmoid(x * (1 - 2 * g)) ** 2  # MONAI's exp(γ logσ(-x(2g - 1))), (1 - p_t)^γ for 0/1 targets
    factor = torch.tensor(alpha, dtype=torch.float64).view(1, 3, 1, 1) * g + (1 - g)
    expected = (factor * modulating * bce).mean()
    assert torch.allclose(get_loss("focal", alpha=alpha)(x, g), expected, rtol=1e-10)
    hard = (g > 0.5).double()
    assert torch.allclose(
        get_loss("focal", alpha=alpha)(x, hard), monai.losses.FocalLoss(alpha=alpha)(x, hard).double(), rtol=1e-5
    )
