"""The Case record and shared aux builders for the property tests (tests/losses/test_properties.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Case:
    """kwargs to build the loss, and how to feed it.

    aux: builds the auxiliary tensors from (one-hot target float64 (B, C, *spatial), labels (B, 1, *spatial)).
    ignore: the loss supports ``ignore_index`` (tested by perturbing ignored logits).
    perfect_is_min: a perfect prediction scores no more than any other prediction.
    gradcheck_eps: finite-difference step (piecewise-linear losses need one that stays between ties).
    """

    kwargs: dict = field(default_factory=dict)
    aux: Callable[[torch.Tensor, torch.Tensor], dict] | None = None
    ignore: bool = True
    perfect_is_min: bool = True
    gradcheck: bool = True
    gradcheck_eps: float = 1e-6
    num_classes: int = 3


def penalty_map(onehot: torch.Tensor, labels: torch.Tensor) -> dict:
    """A stand-in DPCE map: 1 on class boundaries, decaying inside (shape and range of the real one)."""
    pooled = torch.nn.functional.max_pool2d if onehot.ndim == 4 else torch.nn.functional.max_pool3d
    edge = pooled(onehot, 3, 1, 1) - onehot  # 1 just outside each class region
    return {"dist": (edge + 0.5 * onehot).clamp(0, 1)}
