"""Properties every registered loss must have: gradients, edge cases, ignore_index, autocast, bad input."""

from __future__ import annotations

import pytest
import torch

from medseg.losses import get_loss, list_losses

from .cases import CASES, Case

NAMES = sorted(CASES)
IGNORE = 255


def one_hot(labels: torch.Tensor, num_classes: int, dtype=torch.float64) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).to(dtype)


def random_batch(case: Case, spatial=(6, 6), batch=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    c = case.num_classes
    logits = torch.randn(batch, c, *spatial, generator=g, dtype=dtype)
    labels = torch.randint(0, c, (batch, 1, *spatial), generator=g)
    return logits, labels


def build(name: str, **extra) -> torch.nn.Module:
    case = CASES[name]
    return get_loss(name, **{**case.kwargs, **extra}).double()


def call(loss, name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    case = CASES[name]
    aux = {}
    if case.aux is not None:
        # aux maps are built from valid labels only, so that bad labels reach the loss's own checks
        invalid = (labels == IGNORE) | (labels < 0) | (labels >= case.num_classes)
        clean = torch.where(invalid, torch.zeros_like(labels), labels)
        aux = case.aux(one_hot(clean, case.num_classes, logits.dtype), clean)
    return loss(logits, labels, **aux)


def assert_finite_with_grad(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.clone().requires_grad_(True)
    value = call(build(name), name, logits, labels)
    assert value.ndim == 0 and torch.isfinite(value), f"{name}: loss {value}"
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all(), f"{name}: non-finite gradient"
    return value.detach()


def test_every_loss_has_a_case():
    assert {i.name for i in list_losses()} == set(CASES)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    case = CASES[name]
    if not case.gradcheck:
        pytest.skip("not differentiable everywhere (documented in its case)")
    logits, labels = random_batch(case, spatial=(4, 4))
    logits.requires_grad_(True)
    loss = build(name)
    assert torch.autograd.gradcheck(lambda x: call(loss, name, x, labels), (logits,), eps=case.gradcheck_eps, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial", [(7, 6), (5, 4, 6)], ids=["2d", "3d"])
def test_2d_and_3d(name, spatial):
    logits, labels = random_batch(CASES[name], spatial=spatial)
    assert_finite_with_grad(name, logits, labels)


@pytest.mark.parametrize("name", NAMES)
def test_edge_cases_are_finite(name):
    case = CASES[name]
    logits, labels = random_batch(case)
    absent = labels.clamp(max=case.num_classes - 2)  # the last class appears nowhere
    one_voxel = torch.zeros_like(labels)
    one_voxel[0, 0, 2, 3] = 1
    background = torch.zeros_like(labels)
    for target in (absent, one_voxel, background):
        assert_finite_with_grad(name, logits, target)


@pytest.mark.parametrize("name", NAMES)
def test_perfect_prediction_is_minimum(name):
    case = CASES[name]
    if not case.perfect_is_min:
        pytest.skip("no minimum at a perfect prediction by definition (documented in its case)")
    logits, labels = random_batch(case, seed=1)
    perfect = 12.0 * (2 * one_hot(labels, case.num_classes) - 1)
    loss = build(name)
    best = call(loss, name, perfect, labels)
    for other in (logits, 0.5 * perfect + logits, perfect.roll(1, dims=-1)):
        assert best <= call(loss, name, other, labels) + 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_ignored_voxels_change_nothing(name):
    case = CASES[name]
    if not case.ignore:
        pytest.skip("ignore_index not meaningful for this loss (documented in its case)")
    logits, labels = random_batch(case, seed=2)
    labels[0, 0, :2] = IGNORE
    labels[1, 0, :, -1] = IGNORE
    ignored = (labels == IGNORE).expand_as(logits)
    loss = build(name, ignore_index=IGNORE)
    x = logits.clone().requires_grad_(True)
    value = call(loss, name, x, labels)
    value.backward()
    perturbed = torch.where(ignored, logits + 5 * torch.randn_like(logits), logits)
    assert torch.allclose(call(loss, name, perturbed, labels), value.detach(), atol=1e-9, rtol=0)
    assert torch.all(x.grad[ignored] == 0)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_autocast_close_to_float32(name):
    case = CASES[name]
    logits, labels = random_batch(case, spatial=(8, 8), dtype=torch.float32)
    loss = get_loss(name, **case.kwargs)
    aux = case.aux(one_hot(labels, case.num_classes, torch.float32), labels) if case.aux else {}
    reference = loss(logits, labels, **aux)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(logits.bfloat16(), labels, **aux)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert torch.allclose(low, reference, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_clear_error(name):
    case = CASES[name]
    logits, labels = random_batch(case)
    loss = build(name)
    with pytest.raises(ValueError, match="shape"):
        call(loss, name, logits, labels[..., :-1])
    with pytest.raises(ValueError, match="out of range"):
        call(loss, name, logits, labels + case.num_classes)
    with pytest.raises(ValueError, match="out of range"):
        call(loss, name, logits, labels - 1)
    bad = logits.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        call(loss, name, bad, labels)
    not_one_hot = one_hot(labels, case.num_classes)
    not_one_hot[0, 0, 0, 0] = 1.5  # no probability: every loss refuses it (soft targets: test_soft_targets.py)
    with pytest.raises(ValueError, match="one-hot"):
        call(loss, name, logits, not_one_hot)


def test_unknown_loss_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"did you mean.*dice"):
        get_loss("dcie")
