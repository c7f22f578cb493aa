"""Lovász-Softmax and Lovász hinge: kornia parity, hand-worked cases and a set-by-set re-computation."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import kornia
import pytest
import torch

from medseg.losses import LovaszHingeLoss, LovaszSoftmaxLoss, lovasz
from medseg.losses._prepare import Prepared
from medseg.losses.lovasz import lovasz_extension, lovasz_jaccard_weights

from .cases import CASES
from .test_properties import one_hot, random_batch


def jaccard_loss_of_set(mispredicted: set[int], foreground: set[int]) -> float:
    """Berman's Δ_J(M) = |M| / |F ∪ M| (0 for an empty set)."""
    union = foreground | mispredicted
    return len(mispredicted) / len(union) if union else 0.0


def lovasz_by_sets(errors: list[float], foreground: list[bool]) -> float:
    """Lovász extension by its definition: grow the set of the largest errors one voxel at a time."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    fg = {i for i, f in enumerate(foreground) if f}
    total, previous, grown = 0.0, 0.0, set()
    for i in order:
        grown.add(i)
        current = jaccard_loss_of_set(grown, fg)
        total += errors[i] * (current - previous)
        previous = current
    return total


def reference_lovasz_softmax(probs, labels, per_image, classes, ignore_index=None, include_background=True) -> float:
    """Plain-loop Lovász-Softmax over python lists: mean over images (with a scored class) of the class mean."""
    batch, num_classes = probs.shape[:2]
    groups = [[b] for b in range(batch)] if per_image else [list(range(batch))]
    kept = list(range(0 if include_background else 1, num_classes))
    scored_classes = kept if isinstance(classes, str) else classes
    group_losses = []
    for group in groups:
        losses = []
        for c in scored_classes:
            errors, foreground = [], []
            for b in group:
                for p, label in zip(probs[b, c].flatten().tolist(), labels[b, 0].flatten().tolist(), strict=True):
                    if label == ignore_index:
                        continue
                    errors.append(abs(float(label == c) - p))
                    foreground.append(label == c)
            if classes == "present" and not any(foreground):
                continue
            losses.append(lovasz_by_sets(errors, foreground))
        if losses:
            group_losses.append(sum(losses) / len(losses))
    return sum(group_losses) / len(group_losses) if group_losses else 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_softmax_matches_kornia_per_image_all_classes(dtype):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 6, 7, generator=g, dtype=dtype)
    labels = torch.randint(0, 4, (3, 1, 6, 7), generator=g)
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=dtype)
    for w in (None, weight):
        ours = LovaszSoftmaxLoss(per_image=True, classes="all", weight=w)(logits, labels)
        theirs = kornia.losses.LovaszSoftmaxLoss(weight=w)(logits, labels[:, 0])
        assert ours.dtype == dtype
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_softmax_hand_worked_two_classes():
    # one image, 4 voxels, labels [1, 1, 0, 0], probabilities of class 1: [0.8, 0.4, 0.3, 0.1] (softmax=False)
    # class 1: errors |g - p| = [0.2, 0.6, 0.3, 0.1]; sorted 0.6 (v2, fg), 0.3 (v3), 0.2 (v1, fg), 0.1 (v4)
    #   J = |M| / |F ∪ M| with F = {v1, v2}: 1/2, 2/3, 3/3, 4/4
    #   L1 = 0.6*(1/2) + 0.3*(2/3 - 1/2) + 0.2*(1 - 2/3) + 0.1*0 = 0.3 + 0.05 + 1/15 = 5/12
    # class 0: same errors; sorted 0.6 (v2), 0.3 (v3, fg), 0.2 (v1), 0.1 (v4, fg), F = {v3, v4}
    #   J: 1/3, 2/3, 3/4, 4/4
    #   L0 = 0.6/3 + 0.3*(1/3) + 0.2*(3/4 - 2/3) + 0.1*(1/4) = 0.2 + 0.1 + 1/60 + 1/40 = 41/120
    # mean = (50/120 + 41/120) / 2 = 91/240
    p1 = torch.tensor([0.8, 0.4, 0.3, 0.1], dtype=torch.float64)
    probs = torch.stack([1 - p1, p1]).view(1, 2, 1, 4)
    labels = torch.tensor([1, 1, 0, 0]).view(1, 1, 1, 4)
    loss = LovaszSoftmaxLoss(softmax=False)
    assert torch.allclose(loss(probs, labels), torch.tensor(91 / 240, dtype=torch.float64), atol=1e-12)
    per_class = LovaszSoftmaxLoss(softmax=False, reduction="none")(probs, labels).flatten()
    assert torch.allclose(per_class, torch.tensor([41 / 120, 5 / 12], dtype=torch.float64), atol=1e-12)
    # a third class absent from the target: "present" leaves it out; "all" adds its largest probability
    # (Jaccard loss of an empty class is a 0/1 step, whose Lovász extension is the max error)
    p2 = torch.tensor([0.0, 0.3, 0.0, 0.2], dtype=torch.float64)
    three = torch.cat([probs * (1 - p2).view(1, 1, 1, 4), p2.view(1, 1, 1, 4)], 1)
    l1 = LovaszSoftmaxLoss(softmax=False, classes=[1])(three, labels)
    l0 = LovaszSoftmaxLoss(softmax=False, classes=[0])(three, labels)
    present = LovaszSoftmaxLoss(softmax=False)(three, labels)
    every = LovaszSoftmaxLoss(softmax=False, classes="all")(three, labels)
    assert torch.allclose(present, (l0 + l1) / 2, atol=1e-12)
    assert torch.allclose(every, (l0 + l1 + 0.3) / 3, atol=1e-12)


@pytest.mark.parametrize(
    "per_image,classes,spatial,ignore",
    [
        (False, "present", (5, 6), False),
        (True, "present", (5, 6), True),
        (True, "all", (3, 4, 5), False),
        (False, [2, 0], (3, 4, 5), True),
    ],
)
def test_softmax_matches_set_definition(per_image, classes, spatial, ignore):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 1, *spatial), generator=g)  # class 3 absent
    labels[0, 0, 0] = 1
    ignore_index = 255 if ignore else None
    if ignore:
        labels[1, 0, -1] = 255
    ours = LovaszSoftmaxLoss(per_image=per_image, classes=classes, ignore_index=ignore_index)(logits, labels)
    expected = reference_lovasz_softmax(logits.softmax(1), labels, per_image, classes, ignore_index)
    assert abs(ours.item() - expected) < 1e-10


def test_softmax_include_background_false_matches_set_definition():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 1, 4, 5), generator=g)
    ours = LovaszSoftmaxLoss(include_background=False, per_image=True)(logits, labels)
    expected = reference_lovasz_softmax(logits.softmax(1), labels, True, "present", include_background=False)
    assert abs(ours.item() - expected) < 1e-10


def test_background_only_image_in_small_batch():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 5, 5), generator=g)
    labels[0] = 0
    # background scored: the background-only image contributes mean(1 - p0) (errors all weighted 1/N)
    per_image = LovaszSoftmaxLoss(per_image=True, reduction="none")(logits, labels)[..., 0, 0]
    p0 = logits.softmax(1)[0, 0]
    assert torch.allclose(per_image[0], torch.stack([(1 - p0).mean(), p0.new_zeros(()), p0.new_zeros(())]))
    # background not scored: the image has no scored class and is left out of the mean over images
    loss = LovaszSoftmaxLoss(include_background=False, per_image=True)
    assert torch.allclose(loss(logits, labels), loss(logits[1:], labels[1:]), atol=1e-12)
    # a batch with nothing scored gives a finite 0 and zero gradient
    value = loss(logits, torch.zeros_like(labels))
    value.backward()
    assert value.item() == 0.0 and torch.all(logits.grad == 0)


def test_gradient_reaches_only_the_voxels_that_carry_weight():
    # one image, class 1 of 6 voxels (binary fractions: exact errors): foreground errors 1/4, 5/8; background errors
    # (p1) 5/16, 1/8, 1/16, 1/4. After the last foreground voxel (error 1/4) the Jaccard loss stops changing: the
    # background voxels with smaller errors (1/8, 1/16) weigh nothing. Ties keep the voxel order: sorted
    # 5/8 (f) 5/16 (b) 1/4 (f, voxel 0) 1/4 (b, voxel 5), |F| = 2: weights 1/2, 1/6, 1/3, 0, so by hand
    # d loss / d p1 = -1/3, -1/2 (foreground: the error falls as p rises), +1/6, 0, 0, 0.
    p1 = torch.tensor([0.75, 0.375, 0.3125, 0.125, 0.0625, 0.25], dtype=torch.float64, requires_grad=True)
    probs = torch.stack([1 - p1.detach(), p1]).view(1, 2, 1, 6)
    labels = torch.tensor([1, 1, 0, 0, 0, 0]).view(1, 1, 1, 6)
    loss = LovaszSoftmaxLoss(softmax=False, reduction="none")(probs, labels).flatten()[1]
    (grad,) = torch.autograd.grad(loss, p1)
    expected = torch.tensor([-1 / 3, -1 / 2, 1 / 6, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, atol=1e-15, rtol=0)
    assert (
        abs(loss.item() - lovasz_by_sets([0.25, 0.625, 0.3125, 0.125, 0.0625, 0.25], [True] * 2 + [False] * 4)) < 1e-12
    )


def dense_lovasz_softmax(probs, labels, per_image, ignore_index=None):
    """The reference algorithm (Berman's lovasz_softmax): every voxel of every class sorted, autograd through it."""
    batch, num_classes = probs.shape[:2]
    groups = [[b] for b in range(batch)] if per_image else [list(range(batch))]
    group_losses = []
    for group in groups:
        p = probs[group].movedim(1, -1).reshape(-1, num_classes)
        y = labels[group].reshape(-1)
        if ignore_index is not None:
            p, y = p[y != ignore_index], y[y != ignore_index]
        losses = []
        for c in range(num_classes):
            fg = (y == c).to(p.dtype)
            if fg.sum() == 0:
                continue
            errors, order = torch.sort((fg - p[:, c]).abs(), descending=True)
            fg_sorted = fg[order]
            total = fg_sorted.sum()
            jaccard = 1 - (total - fg_sorted.cumsum(0)) / (total + (1 - fg_sorted).cumsum(0))
            weights = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
            losses.append(torch.dot(errors, weights))
        if losses:
            group_losses.append(torch.stack(losses).mean())
    return torch.stack(group_losses).mean()


@pytest.mark.parametrize("per_image", [False, True])
def test_values_and_gradients_match_the_dense_reference(per_image):
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 4, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (3, 1, 9, 11), generator=g)
    labels[1, 0, :3] = 255
    ours = LovaszSoftmaxLoss(per_image=per_image, ignore_index=255)(logits, labels)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    reference = dense_lovasz_softmax(logits.softmax(1), labels, per_image, ignore_index=255)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert abs(ours.item() - reference.item()) < 1e-12
    torch.testing.assert_close(ours_grad, reference_grad, atol=1e-12, rtol=0)


def dense_lovasz_hinge(logits, labels, per_image, ignore_index=None):
    """Berman's lovasz_hinge per channel against its one-hot: every voxel sorted (stable), the Jaccard weights by
    differencing (lovasz_jaccard_weights), autograd through it; mean over (image, channel) terms (or channels)."""
    batch, num_classes = logits.shape[:2]
    groups = [[b] for b in range(batch)] if per_image else [list(range(batch))]
    terms = []
    for group in groups:
        z = logits[group].movedim(1, -1).reshape(-1, num_classes)
        y = labels[group].reshape(-1)
        keep = y != ignore_index if ignore_index is not None else torch.ones_like(y, dtype=torch.bool)
        z, y = z[keep], y[keep]
        for c in range(num_classes):
            g = (y == c).to(z.dtype)
            errors, order = torch.sort(1 - z[:, c] * (2 * g - 1), descending=True, stable=True)
            terms.append(torch.dot(errors.clamp_min(0), lovasz_jaccard_weights(g[order])) if len(g) else z.sum() * 0)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("prune", [0.0, 2.0])
@pytest.mark.parametrize("block", [1, 40, 10**9])
@pytest.mark.parametrize("per_image", [False, True])
def test_blocks_of_rows_match_the_dense_reference(block, per_image, prune, monkeypatch):
    # a block holds one row (or part of an image's classes), several rows or images, or everything; rows sorted
    # whole (prune 0) or only their weighted voxels (prune 2)
    monkeypatch.setattr(lovasz, "_BLOCK_VOXELS", block)
    monkeypatch.setattr(lovasz, "_PRUNE_BELOW", prune)
    g = torch.Generator().manual_seed(21)
    logits = torch.randn(3, 4, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (3, 1, 5, 4), generator=g)
    labels[1, 0, :2] = 255
    labels[2][labels[2] == 3] = 0  # class 3 absent from image 2: a row without foreground
    for ours, reference in (
        (
            LovaszSoftmaxLoss(per_image=per_image, ignore_index=255),
            dense_lovasz_softmax(logits.softmax(1), labels, per_image, 255),
        ),
        (LovaszHingeLoss(per_image=per_image, ignore_index=255), dense_lovasz_hinge(logits, labels, per_image, 255)),
    ):
        value = ours(logits, labels)
        (grad,) = torch.autograd.grad(value, logits)
        (reference_grad,) = torch.autograd.grad(reference, logits)
        assert abs(value.item() - reference.item()) < 1e-12, type(ours).__name__
        torch.testing.assert_close(grad, reference_grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("ignore_index", [-100, 257])
def test_label_maps_beyond_a_byte_match_the_dense_reference(ignore_index):
    # label maps that fit a byte are compared as bytes; these do not (257 would wrap onto class 1), so they keep
    # their type: the ignored voxels still take no part
    g = torch.Generator().manual_seed(23)
    logits = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 6, 5), generator=g)
    labels[0, 0, :2] = ignore_index
    for ours, reference in (
        (
            LovaszSoftmaxLoss(per_image=True, ignore_index=ignore_index),
            dense_lovasz_softmax(logits.softmax(1), labels, True, ignore_index),
        ),
        (
            LovaszHingeLoss(ignore_index=ignore_index),
            dense_lovasz_hinge(logits, labels, True, ignore_index),
        ),
    ):
        value = ours(logits, labels)
        (grad,) = torch.autograd.grad(value, logits)
        (reference_grad,) = torch.autograd.grad(reference, logits)
        assert abs(value.item() - reference.item()) < 1e-12, type(ours).__name__
        torch.testing.assert_close(grad, reference_grad, atol=1e-12, rtol=0)


def test_a_label_map_builds_no_one_hot_target(monkeypatch):
    # the foreground of each row comes from the labels: the one-hot (B, C, ...) target is never built
    def no_target(self):
        raise AssertionError("one-hot target built")

    g = torch.Generator().manual_seed(22)
    logits = torch.randn(2, 4, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (2, 1, 6, 5), generator=g)
    labels[0, 0, 0] = 255
    softmax_reference = reference_lovasz_softmax(logits.detach().softmax(1), labels, False, [3, 1], 255, False)
    hinge_reference = dense_lovasz_hinge(logits, labels, True, 255)
    monkeypatch.setattr(Prepared, "_build_target", no_target)
    softmax = LovaszSoftmaxLoss(include_background=False, classes=[3, 1], ignore_index=255)(logits, labels)
    hinge = LovaszHingeLoss(ignore_index=255)(logits, labels)
    assert abs(softmax.item() - softmax_reference) < 1e-12
    assert abs(hinge.item() - hinge_reference.item()) < 1e-12
    torch.testing.assert_close(
        torch.autograd.grad(hinge, logits)[0], torch.autograd.grad(hinge_reference, logits)[0], atol=1e-12, rtol=0
    )


def test_ties_give_the_set_definition_value():
    # probabilities on a coarse grid: many voxels share an error, inside and across foreground and background
    g = torch.Generator().manual_seed(12)
    probs = torch.randint(0, 5, (2, 3, 6, 7), generator=g).double() + 0.5
    probs = probs / probs.sum(1, keepdim=True)
    labels = torch.randint(0, 3, (2, 1, 6, 7), generator=g)
    for per_image in (False, True):
        ours = LovaszSoftmaxLoss(softmax=False, per_image=per_image)(probs, labels)
        expected = reference_lovasz_softmax(probs, labels, per_image, "present")
        assert abs(ours.item() - expected) < 1e-12


def test_float32_sums_of_large_rows_stay_exact():
    # a row of 180 000 voxels: its weighted sum adds up in float64 (a float32 running sum drifts by 1e-4)
    g = torch.Generator().manual_seed(13)
    logits = torch.randn(2, 3, 300, 300, generator=g)
    labels = torch.randint(0, 3, (2, 1, 300, 300), generator=g)
    for loss in (LovaszSoftmaxLoss(), LovaszHingeLoss()):
        single, double = loss(logits, labels), loss(logits.double(), labels)
        assert abs(single.item() - double.item()) < 2e-6 * abs(double.item()), type(loss).__name__


def toolbelt_lovasz():
    """pytorch-toolbelt's Lovász module (Berman's reference code), loaded from its file: the package's own
    __init__ needs OpenCV."""
    spec = importlib.util.find_spec("pytorch_toolbelt")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pytorch_toolbelt is not installed")
    path = Path(spec.submodule_search_locations[0]) / "losses" / "lovasz.py"
    module_spec = importlib.util.spec_from_file_location("toolbelt_lovasz", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_matches_pytorch_toolbelt_softmax_and_hinge():
    reference = toolbelt_lovasz()
    g = torch.Generator().manual_seed(14)
    logits = torch.randn(2, 4, 40, 30, generator=g)
    labels = torch.randint(0, 4, (2, 1, 40, 30), generator=g)
    labels[0, 0, :5] = 255
    theirs = reference._lovasz_softmax(logits.softmax(1), labels[:, 0], per_image=False, ignore_index=255)
    ours = LovaszSoftmaxLoss(ignore_index=255)(logits, labels)
    assert abs(ours.item() - theirs.item()) < 1e-5
    binary = (labels[:, 0] == 1).long()
    theirs = reference._lovasz_hinge(logits[:, 1], binary, per_image=True)
    assert abs(LovaszHingeLoss()(logits[:, 1:2], binary[:, None]).item() - theirs.item()) < 1e-5


def test_float64_is_kept():
    logits, labels = torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randint(0, 3, (1, 1, 4, 4))
    for loss in (LovaszSoftmaxLoss(), LovaszHingeLoss()):
        assert loss(logits, labels).dtype == torch.float64


def test_softmax_gradcheck_per_image_3d_with_ignore():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 3, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 3, 3, 2), generator=g)
    labels[0, 0, 0] = 255
    loss = LovaszSoftmaxLoss(per_image=True, classes="all", ignore_index=255)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (logits,), eps=1e-6, atol=1e-5)


def test_softmax_bad_arguments_raise():
    with pytest.raises(ValueError, match="classes"):
        LovaszSoftmaxLoss(classes="some")
    with pytest.raises(ValueError, match="classes"):
        LovaszSoftmaxLoss(classes=[1, 1])
    logits, labels = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 1, 4, 4))
    with pytest.raises(ValueError, match="not among"):
        LovaszSoftmaxLoss(classes=[3])(logits, labels)
    with pytest.raises(ValueError, match="include_background"):
        LovaszSoftmaxLoss(classes=[0], include_background=False)(logits, labels)
    with pytest.raises(ValueError, match="weight"):
        LovaszSoftmaxLoss(weight=[1.0, 2.0])(logits, labels)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hinge_matches_kornia(dtype):
    g = torch.Generator().manual_seed(8)
    logits = 2 * torch.randn(3, 1, 6, 7, generator=g, dtype=dtype)
    labels = torch.randint(0, 2, (3, 1, 6, 7), generator=g)
    labels[1] = 0  # a background-only image
    theirs = kornia.losses.LovaszHingeLoss()
    assert torch.allclose(LovaszHingeLoss()(logits, labels), theirs(logits, labels[:, 0]), atol=1e-5, rtol=0)
    # per_image=False scores the batch as one image: kornia on the images stacked into one
    whole = LovaszHingeLoss(per_image=False)(logits, labels)
    assert torch.allclose(whole, theirs(logits.reshape(1, 1, 18, 7), labels.reshape(1, 18, 7)), atol=1e-5, rtol=0)


def test_hinge_ignore_index_and_channels_match_kornia_on_kept_voxels():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 1, 5, 6), generator=g)
    labels[0, 0, :2] = 255
    labels[1, 0, :, 0] = 255
    ours = LovaszHingeLoss(ignore_index=255)(logits, labels)
    terms = []
    for b, c in itertools.product(range(2), range(3)):
        kept = labels[b, 0] != 255
        z = logits[b, c][kept].view(1, 1, 1, -1)
        t = (labels[b, 0][kept] == c).long().view(1, 1, -1)
        terms.append(kornia.losses.LovaszHingeLoss()(z, t))
    assert torch.allclose(ours, torch.stack(terms).mean(), atol=1e-10)


def test_hinge_hand_worked():
    # logits [2, 0.5, -0.2, -3], labels [1, 0, 1, 0]: hinge errors 1 - z(2g-1) = [-1, 1.5, 1.2, -2] -> relu
    # [0, 1.5, 1.2, 0]; sorted 1.5 (v2, bg), 1.2 (v3, fg), then zeros; F = {v1, v3}
    # J: M={v2} -> 1/3, M={v2,v3} -> 2/3; loss = 1.5*(1/3) + 1.2*(2/3 - 1/3) = 0.9
    logits = torch.tensor([2.0, 0.5, -0.2, -3.0], dtype=torch.float64).view(1, 1, 1, 4)
    labels = torch.tensor([1, 0, 1, 0]).view(1, 1, 1, 4)
    assert torch.allclose(LovaszHingeLoss()(logits, labels), torch.tensor(0.9, dtype=torch.float64), atol=1e-12)
    # background only: the Lovász extension of the 0/1 step is max(0, 1 + max z) = 1 + 2
    assert torch.allclose(LovaszHingeLoss()(logits, torch.zeros_like(labels)), torch.tensor(3.0, dtype=torch.float64))


def test_values_that_are_not_probabilities_raise_without_softmax():
    # the errors |g - p| and their order assume probabilities; logits passed with softmax=False are refused
    logits, labels = 3 * torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"softmax=True, or probabilities in \[0, 1\]"):
        LovaszSoftmaxLoss(softmax=False)(logits, labels)
    with pytest.raises(ValueError, match="non-negative"):
        lovasz_extension(torch.tensor([[0.5, -0.1, 0.2]]), torch.tensor([[1, 0, 1]]))
    LovaszSoftmaxLoss(softmax=False)(logits.softmax(1), labels)  # probabilities pass


def test_fully_ignored_image_and_empty_batch_get_no_gradient():
    g = torch.Generator().manual_seed(15)
    logits = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 4, 5), generator=g)
    labels[0] = 255
    for loss in (LovaszHingeLoss(ignore_index=255), LovaszSoftmaxLoss(ignore_index=255, per_image=True)):
        value = loss(logits, labels)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.all(grad[0] == 0) and grad[1].abs().sum() > 0, type(loss).__name__
        assert torch.allclose(value, loss(logits[1:], labels[1:]) / (2 if isinstance(loss, LovaszHingeLoss) else 1))


def test_gradcheck_eps_stays_between_ties():
    """The gradcheck step of the property tests (cases_region.py) cannot cross a tie of the sorted errors."""
    logits, labels = random_batch(CASES["lovasz"], spatial=(4, 4))  # the gradcheck batch of test_properties.py
    target = one_hot(labels, 3)
    eps = CASES["lovasz"].gradcheck_eps
    softmax_errors = (target - logits.softmax(1)).abs().transpose(0, 1).flatten(1).sort(-1).values
    # one logit step of eps moves an error by at most eps/4 (|dp/dx| <= 1/4); the step goes both ways
    assert softmax_errors.diff(dim=-1).min() > 100 * 2 * eps / 4
    hinge_errors = 1 - logits * (2 * target - 1)
    assert hinge_errors.flatten(2).sort(-1).values.diff(dim=-1).min() > 100 * 2 * CASES["lovasz_hinge"].gradcheck_eps
    assert hinge_errors.abs().min() > 100 * CASES["lovasz_hinge"].gradcheck_eps
