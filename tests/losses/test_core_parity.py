"""CrossEntropyLoss and DiceLoss give torch's and MONAI's numbers under the same arguments."""

import monai.losses
import pytest
import torch

from medseg.losses import CrossEntropyLoss, DiceLoss


def batch(spatial=(6, 7), classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, classes, *spatial, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (2, 1, *spatial), generator=g)
    return x, y


WEIGHT = [0.2, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 3)])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"weight": WEIGHT},
        {"label_smoothing": 0.1},
        {"weight": WEIGHT, "label_smoothing": 0.2},
        {"reduction": "sum"},
    ],
)
@pytest.mark.parametrize("ignore", [False, True])
def test_ce_matches_torch(spatial, kwargs, ignore):
    x, y = batch(spatial)
    extra = {}
    if ignore:
        y[0, 0, :2] = 255
        extra["ignore_index"] = 255
    ours = CrossEntropyLoss(**kwargs, **extra)(x, y)
    torch_kwargs = {**kwargs, **extra}
    if "weight" in torch_kwargs:
        torch_kwargs["weight"] = torch.tensor(WEIGHT, dtype=torch.float64)
    ref = torch.nn.CrossEntropyLoss(**torch_kwargs)(x, y[:, 0])
    assert torch.allclose(ours, ref, atol=1e-10)


def test_ce_none_reduction_and_one_hot_target_match_torch():
    x, y = batch()
    onehot = torch.nn.functional.one_hot(y[:, 0], 4).movedim(-1, 1)
    ref = torch.nn.functional.cross_entropy(x, y[:, 0], reduction="none")
    assert torch.allclose(CrossEntropyLoss(reduction="none")(x, y), ref)
    assert torch.allclose(CrossEntropyLoss()(x, onehot), ref.mean())


def test_ce_sigmoid_matches_bce_with_logits():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64)
    y = (torch.rand(2, 1, 5, 5, generator=g) > 0.5).double()
    ref = torch.nn.functional.binary_cross_entropy_with_logits(x, y)
    assert torch.allclose(CrossEntropyLoss(sigmoid=True)(x, y), ref)


def test_ce_without_background_drops_class_zero_terms():
    x, y = batch()
    # hand-written: mean of -log softmax over voxels whose label is not 0
    logp = torch.log_softmax(x, 1).gather(1, y)[:, 0]
    ref = -logp[y[:, 0] != 0].mean()
    assert torch.allclose(CrossEntropyLoss(include_background=False)(x, y), ref)


def test_ce_all_ignored_is_zero_not_nan():
    x, y = batch()
    assert CrossEntropyLoss(ignore_index=255)(x, torch.full_like(y, 255)) == 0


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 3)])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"softmax": True},
        {"softmax": True, "include_background": False},
        {"sigmoid": True, "batch": True},
        {"softmax": True, "squared_pred": True},
        {"softmax": True, "jaccard": True, "smooth_nr": 0.0, "smooth_dr": 1e-3},
        # MONAI's jaccard, 1 - (2TP + s)/(2(TP + FP + FN) + s): smoothing 1 tells it from (TP + s)/(TP + FP + FN + s)
        {"softmax": True, "jaccard": True, "smooth_nr": 1.0, "smooth_dr": 1.0},
        {"sigmoid": True, "jaccard": True, "squared_pred": True, "smooth_nr": 1.0, "smooth_dr": 1.0},
        {"softmax": True, "weight": WEIGHT},
        {"softmax": True, "reduction": "none"},
        {"softmax": True, "reduction": "sum", "batch": True},
        {"other_act": torch.tanh},
    ],
)
@pytest.mark.parametrize("ignore", [False, True])
def test_dice_matches_monai(spatial, kwargs, ignore):
    x, y = batch(spatial)
    if ignore:
        y[1, 0, -1] = 255
        kwargs = {**kwargs, "ignore_index": 255}
    ours = DiceLoss(**kwargs)(x, y)
    ref = monai.losses.DiceLoss(to_onehot_y=True, **kwargs)(x, y)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref.to(ours.dtype), atol=1e-5)


def test_dice_hand_worked():
    # one image, 2 classes, 4 voxels; p(class 1) = [0.9, 0.8, 0.1, 0.4], g = [1, 1, 0, 0]
    # class 1: TP = 1.7, Σp = 2.2, Σg = 2 -> 1 - 3.4/4.2 = 0.190476; class 0: TP = 0.9+0.6 = 1.5, Σp = 1.8,
    # Σg = 2 -> 1 - 3.0/3.8 = 0.210526; mean = 0.200501 (no smoothing)
    p1 = torch.tensor([0.9, 0.8, 0.1, 0.4], dtype=torch.float64)
    probs = torch.stack([1 - p1, p1]).view(1, 2, 2, 2)
    labels = torch.tensor([1, 1, 0, 0]).view(1, 1, 2, 2)
    loss = DiceLoss(smooth_nr=0, smooth_dr=0)(probs, labels)
    assert loss.item() == pytest.approx((1 - 3.4 / 4.2 + 1 - 3.0 / 3.8) / 2, abs=1e-12)


def test_dice_single_channel_ignores_weight_as_monai():
    x, y = batch(classes=1)
    y = (y > 0).double()
    x = torch.randn_like(x)
    ours = DiceLoss(sigmoid=True, weight=[3.0])(x, y)
    ref = monai.losses.DiceLoss(sigmoid=True, weight=[3.0])(x, y)
    assert torch.allclose(ours, ref.to(ours.dtype), atol=1e-6)
