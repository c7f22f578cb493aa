"""Region-level losses: overlap of soft predictions and targets per class (Dice, Jaccard, Tversky, ...).

Each loss gathers TP/FP/FN in one pass (:func:`overlap_stats`), combines them per class, then reduces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._prepare import SegmentationLoss, apply_class_weight, class_weight_tensor, overlap_stats, reduce
from .registry import register

__all__ = ["DiceLoss"]


@register("dice", "region", "Milletari et al., V-Net, 3DV 2016")
class DiceLoss(SegmentationLoss):
    r"""Soft Dice loss per class: :math:`1 - \frac{2TP + s_{nr}}{2TP + FP + FN + s_{dr}}`.

    Same arguments, defaults and numbers as MONAI's ``DiceLoss`` (``squared_pred`` gives the V-Net form with
    :math:`\sum p^2 + \sum g^2` in the denominator; ``jaccard`` gives :math:`1 - \frac{TP+s}{TP+FP+FN+s}`).
    Adds: label-map targets without ``to_onehot_y``, input validation, float32 reductions under autocast.

    A class absent from target and prediction scores :math:`1 - s_{nr}/s_{dr} = 0` (default smoothing).
    ``reduction="none"`` returns ``(B, C, 1, ...)`` (``(1, C, 1, ...)`` with ``batch=True``).

    Reference: Milletari, Navab, Ahmadi, "V-Net", 3DV 2016.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act=None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, ignore_index)
        self.squared_pred = squared_pred
        self.jaccard = jaccard
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = batch
        self.register_buffer("class_weight", class_weight_tensor(weight), persistent=False)

    def per_class(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Dice loss per item and class, ``(B, C')`` (``(C',)`` with ``batch=True``)."""
        prep = self.prepare(input, target)
        tp, fp, fn = overlap_stats(prep, self.batch, self.squared_pred)
        if self.jaccard:
            return 1.0 - (tp + self.smooth_nr) / (tp + fp + fn + self.smooth_dr)
        return 1.0 - (2.0 * tp + self.smooth_nr) / (2.0 * tp + fp + fn + self.smooth_dr)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.per_class(input, target)
        loss = apply_class_weight(loss, self.class_weight, class_dim=loss.ndim - 1)
        if self.batch and self.reduction == "none":
            loss = loss.unsqueeze(0)
        return reduce(loss, self.reduction, input.ndim - 2)
