"""Compounds prepare their input once: one softmax, one label check, one one-hot for all their terms.

The call counts are taken with ``mock.patch`` (``torch.nn.functional.cross_entropy`` counts as the softmax it runs
inside); the values are compared with the terms computed by hand or called one by one, outside any block.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from unittest import mock

import pytest
import torch

from medseg.losses import CompoundLoss, get_loss
from medseg.losses._prepare import shared_preparation

SOFTMAXES = ((torch, "softmax"), (torch, "log_softmax"), (torch.nn.functional, "cross_entropy"))


@contextlib.contextmanager
def counting_softmaxes():
    """Count the calls of every function that computes a softmax over the classes."""
    calls: Counter[str] = Counter()
    with contextlib.ExitStack() as stack:
        for module, name in SOFTMAXES:
            original = getattr(module, name)

            def wrapped(*args, _original=original, _name=name, **kwargs):
                calls[_name] += 1
                return _original(*args, **kwargs)

            stack.enter_context(mock.patch.object(module, name, wrapped))
        yield calls


def batch(seed: int = 0, classes: int = 4, shape=(2, 7, 6)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, *shape[1:], generator=g, dtype=torch.float64).requires_grad_(True)
    labels = torch.randint(0, classes, (2, 1, *shape[1:]), generator=g)
    return logits, labels


def hand_dice_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """MONAI's default soft Dice (per item and class, then the mean), written out."""
    p = torch.exp(logits - logits.logsumexp(1, keepdim=True))
    g = torch.nn.functional.one_hot(labels[:, 0], logits.shape[1]).movedim(-1, 1).to(p)
    dims = tuple(range(2, p.ndim))
    tp = (p * g).sum(dims)
    return (1 - (2 * tp + smooth) / (p.sum(dims) + g.sum(dims) + smooth)).mean()


def hand_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    log_p = logits - logits.logsumexp(1, keepdim=True)
    return -log_p.gather(1, labels).mean()


def test_compound_ce_dice_runs_one_softmax_and_keeps_its_value():
    logits, labels = batch()
    loss = CompoundLoss({"ce": 0.3, "dice": 0.7}, loss_kwargs={"dice": {"softmax": True}})
    with counting_softmaxes() as calls:
        value = loss(logits, labels)
    assert sum(calls.values()) == 1, calls
    expected = 0.3 * hand_cross_entropy(logits, labels) + 0.7 * hand_dice_loss(logits, labels)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(value, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("dice_ce", {"softmax": True}),
        ("dice_ce", {"softmax": True, "include_background": False, "weight": [1.0, 2.0, 0.5, 1.0]}),
        ("dice_focal", {"softmax": True, "focal_softmax": True}),
        ("combo", {"softmax": True}),
    ],
)
def test_builtin_compounds_run_one_softmax_and_equal_their_terms(name, kwargs):
    logits, labels = batch(1)
    loss = get_loss(name, **kwargs)
    with counting_softmaxes() as calls:
        value = loss(logits, labels)
    assert sum(calls.values()) == 1, calls
    if name == "combo":  # each term outside any block: its own softmax
        expected = loss.alpha * loss.weighted_ce(loss.prepare(logits, labels)).mean()
        expected = expected + (1 - loss.alpha) * loss.dice.per_class(logits, labels).mean()
    elif name == "dice_ce":
        expected = loss.dice(logits, labels) + loss.cross_entropy(logits, labels)
    else:
        expected = loss.dice(logits, labels) + loss.focal(logits, labels)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_terms_with_different_ignore_index_or_classes_keep_their_own_targets():
    """The block shares what is the same; a term with another ignore_index or include_background gets its own."""
    logits, labels = batch(2)
    kwargs = {
        "dice": {"softmax": True, "ignore_index": 0},
        "jaccard": {"softmax": True, "include_background": False},
        "ce": {"label_smoothing": 0.1},  # assigns its own smoothed target: the others must not see it
        "tversky": {"softmax": True},
    }
    loss = CompoundLoss(dict.fromkeys(kwargs, 1.0), loss_kwargs=kwargs)
    value = loss(logits, labels)
    expected = sum(get_loss(name, **kw)(logits, labels) for name, kw in kwargs.items())
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    for name, kw in kwargs.items():
        torch.testing.assert_close(loss.last_values[name], get_loss(name, **kw)(logits, labels).detach())


def test_block_ends_with_the_call_and_a_new_input_gets_new_work():
    logits, labels = batch(3)
    loss = CompoundLoss({"ce": 1.0, "dice": 1.0}, loss_kwargs={"dice": {"softmax": True}})
    first = loss(logits, labels)
    other_logits, _ = batch(4)
    second = loss(other_logits, labels)
    expected = hand_cross_entropy(other_logits, labels) + hand_dice_loss(other_logits, labels)
    torch.testing.assert_close(second, expected, rtol=1e-12, atol=1e-12)
    assert not torch.equal(first, second)


def test_a_bad_label_is_refused_inside_a_block_too():
    logits, labels = batch(5)
    labels[0, 0, 0, 0] = 9
    with shared_preparation(), pytest.raises(ValueError, match="label value 9 is out of range"):
        CompoundLoss({"ce": 1.0, "dice": 1.0})(logits, labels)
