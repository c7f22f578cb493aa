"""One rule for single-channel input across the registry: binary semantics, or a clear error.

A ``(B, 1, *spatial)`` input is a binary problem whose channel is the foreground. Every registered loss, under every
activation setting its constructor takes, either gives the binary loss or raises a ValueError naming the loss and the
fix. The binary loss is checked against an independent computation: torch's BCE-with-logits, MONAI or kornia given
the sigmoid, a hand formula, or the same loss on the two-channel logits ``(0, x)``, whose softmax is exactly
``(1 - σ(x), σ(x))``. Never a number from raw logits read as probabilities, at 1x or at 100x logits (where such a
number is furthest off: the issue saw sens_spec 9640).
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable

import kornia
import monai.losses
import pytest
import torch
import torch.nn.functional as F

from medseg.losses import get_loss, list_losses, loss_info
from medseg.losses._prepare import SegmentationLoss
from medseg.transforms import distance_maps

from .cases import CASES

# hausdorff_dt keeps its one channel whatever include_background says (MONAI's rule, and its warning)
pytestmark = pytest.mark.filterwarnings("ignore:single channel prediction, `include_background=False` ignored")

NAMES = [info.name for info in list_losses()]
SCALES = [1.0, 100.0]

#: losses defined on C >= 2 mutually exclusive classes only: one channel is a ValueError naming the fix
ERRORS = {"gwdl", "exp_log", "active_boundary", "conditional_boundary"}


def binary_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (2, 1, 8, 8) float64 and a 0/1 label map: a foreground block per image (it has a boundary)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    y[0, 0, 2:6, 1:5] = 1
    y[0, 0, 7, 7] = 1
    y[1, 0, 3:7, 3:8] = 1
    return x, y


def parameters(name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(loss_info(name).cls).parameters)


def base_kwargs(name: str) -> dict:
    """The property tests' arguments (checkpoint, pool size, ...) without their activation."""
    kwargs = {k: v for k, v in CASES[name].kwargs.items() if k not in ("softmax", "sigmoid")}
    if name == "gwdl":
        kwargs["dist_matrix"] = [[0.0, 1.0], [1.0, 0.0]]
    return kwargs


def build(name: str, **setting) -> torch.nn.Module:
    return get_loss(name, **base_kwargs(name), **setting).double()


def aux(name: str, y: torch.Tensor) -> dict:
    """The loss's aux maps of the foreground class alone, (B, 1, *spatial), as the pipeline makes them."""
    if name == "conditional_boundary":
        return {"features": torch.randn(2, 3, 8, 8, dtype=torch.float64)}
    case = CASES[name]
    return case.aux(y.double(), y) if case.aux is not None else {}


def activation_settings(name: str) -> list[dict]:
    """Every activation setting the constructor takes: its default, softmax=True/False, sigmoid=True."""
    params = parameters(name)
    settings: list[dict] = [{}]
    if "softmax" in params:
        settings += [{"softmax": True}, {"softmax": False}]
    if "sigmoid" in params:
        settings.append({"sigmoid": True})
    return settings


def reads_input_as_probabilities(loss: torch.nn.Module) -> bool:
    """No activation: the loss (for Dice+CE and Dice+focal, its Dice term) takes the input as probabilities."""
    flags = loss if isinstance(loss, SegmentationLoss) else loss.dice
    return not (flags.sigmoid or flags.softmax or flags.other_act is not None)


# ------------------------------------------------------------------------------------ independent binary values
def two_channel(x: torch.Tensor) -> torch.Tensor:
    """The logits (0, x): their softmax is (1 - σ(x), σ(x)) exactly."""
    return torch.cat([torch.zeros_like(x), x], 1)


def as_two_classes(name: str, **extra) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss on the two-channel logits (0, x) with its softmax. ``include_background=False`` for the
    one-vs-rest (per-class) losses, whose single channel is the foreground class alone."""

    def reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        setting = {"softmax": True} if "softmax" in parameters(name) else {}
        return build(name, **setting, **extra)(two_channel(x), y, **aux(name, y))

    return reference


def bce(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(x, y.double())


def sigmoid_focal(x: torch.Tensor, y: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """torchvision's sigmoid_focal_loss formula (no α), mean over voxels."""
    p, g = torch.sigmoid(x), y.double()
    p_t = p * g + (1 - p) * (1 - g)
    return (F.binary_cross_entropy_with_logits(x, g, reduction="none") * (1 - p_t) ** gamma).mean()


def balanced_bce(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """HED: positives weighted by the fraction of negatives β, negatives by 1 - β."""
    g = y.double()
    beta = 1 - g.mean()
    return F.binary_cross_entropy_with_logits(x, g, weight=beta * g + (1 - beta) * (1 - g))


def rmi_binary(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """λ·BCE + (1 − λ)·RMI of the sigmoid probabilities (the RMI bound itself is tested in test_mutual_information)."""
    loss = build("rmi")
    return 0.5 * bce(x, y) + 0.5 * loss.rmi_lower_bound(torch.sigmoid(x), y.double()).mean()


def combo_binary(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """α·(β-weighted BCE, β = 1/2) + (1 − α)·(MONAI's Dice with a sigmoid), α = 1/2."""
    dice = monai.losses.DiceLoss(sigmoid=True)(x, y.double())
    return 0.5 * (0.5 * bce(x, y)) + 0.5 * dice


def shape_aware_binary(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Jadon's binary form: mean of (1 + E)·BCE, E = |φ| (the foreground's signed distance map) on the contour of
    the predicted foreground (x > 0 with a face neighbour predicted background; the image edge is no contour)."""
    foreground = (x > 0).double()
    padded = F.pad(foreground, (1, 1, 1, 1), mode="replicate")
    neighbours = [padded[..., :-2, 1:-1], padded[..., 2:, 1:-1], padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]]
    contour = (foreground > 0) & (torch.stack(neighbours).amin(0) == 0)
    distance = distance_maps(y.double(), "signed").abs().to(x)
    weight = 1 + torch.where(contour, distance, torch.zeros_like(distance))
    return (weight * F.binary_cross_entropy_with_logits(x, y.double(), reduction="none")).mean()


def monai_sigmoid(cls: type) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda x, y: cls(sigmoid=True)(x, y.double())


EXCLUSIVE = ["topk", "dpce", "conservative", "unified_focal", "unet_weighted_ce"]
FOREGROUND = [
    "penalty_gdl",
    "log_cosh_dice",
    "jaccard",
    "focal_tversky",
    "asym_similarity",
    "sens_spec",
    "t_loss",
    "lovasz",
    "boundary",
    "region_wise",
    "hausdorff_er",
    "boundary_dou",
    "inverse_form",
]
#: the binary value of each loss that has one, from an independent computation
REFERENCE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": bce,
    "focal": sigmoid_focal,
    "balanced_ce": balanced_bce,
    "rmi": rmi_binary,
    "lovasz_hinge": lambda x, y: kornia.losses.LovaszHingeLoss()(x, y[:, 0]),
    "boundary_aware": bce,  # one bin: the bin map is the foreground mask
    "combo": combo_binary,
    "shape_aware": shape_aware_binary,
    "dice": monai_sigmoid(monai.losses.DiceLoss),
    "tversky": monai_sigmoid(monai.losses.TverskyLoss),
    "generalized_dice": monai_sigmoid(monai.losses.GeneralizedDiceLoss),
    "hausdorff_dt": monai_sigmoid(monai.losses.HausdorffDTLoss),
    "dice_ce": monai_sigmoid(monai.losses.DiceCELoss),
    "dice_focal": monai_sigmoid(monai.losses.DiceFocalLoss),
    **{name: as_two_classes(name) for name in EXCLUSIVE},
    **{name: as_two_classes(name, include_background=False) for name in FOREGROUND},
}


def assert_names_loss(name: str, message: str) -> None:
    assert re.search(rf"\b{name}\b", message) or loss_info(name).cls.__name__ in message, f"{name}: {message}"


# ------------------------------------------------------------------------------------------------------- tests
def test_every_loss_has_a_single_channel_rule():
    assert set(REFERENCE) | ERRORS == set(NAMES)
    assert not set(REFERENCE) & ERRORS


@pytest.mark.parametrize("scale", SCALES, ids=["1x", "100x"])
@pytest.mark.parametrize("name", NAMES)
def test_single_channel_logits_are_binary_or_a_clear_error(name, scale):
    x, y = binary_batch()
    x = scale * x
    computed = 0
    for setting in activation_settings(name):
        loss = build(name, **setting)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the softmax=True warning has its own test
            try:
                value = loss(x, y, **aux(name, y))
            except ValueError as error:
                message = str(error)
                assert_names_loss(name, message)
                if name in ERRORS:
                    assert re.search(r"(two|C >= 2).*channels", message), message
                else:  # only logits given to a loss told they are probabilities may be refused
                    assert reads_input_as_probabilities(loss), f"{name} {setting}: {message}"
                    assert "sigmoid=True" in message and "[0, 1]" in message, message
                continue
        assert name not in ERRORS, f"{name} {setting} scored one channel: {value}"
        expected = REFERENCE[name](x, y)
        assert torch.allclose(value, expected.to(value), rtol=1e-6, atol=1e-9), (
            f"{name} {setting}: {value.item()} where the binary loss is {expected.item()}"
        )
        computed += 1
    assert computed or name in ERRORS, f"{name}: no activation setting scores one channel"


def probability_settings(name: str) -> list[dict]:
    """The settings under which a loss with activation flags reads its input as probabilities. Not Dice+CE and
    Dice+focal: their CE/focal term takes logits whatever the flags (MONAI's rule)."""
    if name in ERRORS or name in ("dice_ce", "dice_focal") or "softmax" not in parameters(name):
        return []
    return [s for s in activation_settings(name) if reads_input_as_probabilities(build(name, **s))]


@pytest.mark.parametrize("name", [name for name in NAMES if probability_settings(name)])
def test_single_channel_probabilities_without_activation_are_binary(name):
    """Where the loss reads its input as probabilities, σ(x) gives the binary value of the logits x."""
    x, y = binary_batch()
    for setting in probability_settings(name):
        value = build(name, **setting)(torch.sigmoid(x), y, **aux(name, y))
        assert torch.allclose(value, REFERENCE[name](x, y).to(value), rtol=1e-6, atol=1e-9), f"{name} {setting}"


@pytest.mark.parametrize("name", sorted(n for n in set(NAMES) - ERRORS if "softmax" in parameters(n)))
def test_softmax_on_one_channel_warns_where_it_is_the_users_choice(name):
    """MONAI warns when ``softmax=True`` meets one channel; so does medseg (then computes the binary loss) where the
    softmax is the user's choice (default off). Where it is the loss's own default (CE, Lovász, focal) the single
    channel is binary by the loss's definition and nothing is said."""
    x, y = binary_batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(name, softmax=True)(x, y, **aux(name, y))
    said = [str(w.message) for w in caught if "softmax=True" in str(w.message)]
    if parameters(name)["softmax"].default:
        assert said == []
    else:
        assert len(said) == 1 and "single channel prediction" in said[0] and "binary" in said[0], said
        assert_names_loss(name, said[0])


def test_cross_entropy_default_is_bce_with_logits():
    """The issue's case: ``get_loss("ce")`` on one channel read the logits as probabilities (12.51 vs BCE 0.80)."""
    x, y = binary_batch()
    for scale in SCALES:
        expected = F.binary_cross_entropy_with_logits(scale * x, y.double())
        assert torch.allclose(get_loss("ce")(scale * x, y), expected, rtol=1e-12)
        two_class = F.cross_entropy(two_channel(scale * x), y[:, 0])
        assert torch.allclose(expected, two_class, rtol=1e-12)


def test_single_channel_cross_entropy_options_are_binary():
    x, y = binary_batch()
    per_voxel = get_loss("ce", reduction="none")(x, y)
    assert torch.allclose(per_voxel, F.binary_cross_entropy_with_logits(x, y.double(), reduction="none"))
    smoothed = get_loss("ce", label_smoothing=0.2)(x, y)
    assert torch.allclose(smoothed, F.cross_entropy(two_channel(x), y[:, 0], label_smoothing=0.2), rtol=1e-12)


def test_single_channel_cross_entropy_on_probabilities_is_binary():
    x, y = binary_batch()
    p = torch.sigmoid(x)
    assert torch.allclose(get_loss("ce", softmax=False)(p, y), F.binary_cross_entropy(p, y.double()), rtol=1e-12)


def test_other_act_is_applied_as_given_as_in_monai():
    # MONAI's own case (tests/losses/test_dice_loss.py): tanh gives values in [-1, 1], read as they are
    x = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]])
    y = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]])
    ours = get_loss("dice", other_act=torch.tanh, smooth_nr=1e-4, smooth_dr=1e-4)(x, y)
    assert ours.item() == pytest.approx(0.999963, abs=1e-6)


def test_monai_single_channel_warning_cases_still_warn():
    # MONAI's test_input_warnings: a (1, 1, 3) input of ones with softmax=True warns
    ones = torch.ones((1, 1, 3))
    for name in ["dice", "generalized_dice", "tversky", "hausdorff_dt"]:
        with pytest.warns(UserWarning, match="single channel prediction"):
            get_loss(name, softmax=True)(ones.unsqueeze(-1), ones.unsqueeze(-1))


def test_nan_without_activation_is_named_as_nan():
    x, y = binary_batch()
    p = torch.sigmoid(x)
    p[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        get_loss("dice")(p, y)
