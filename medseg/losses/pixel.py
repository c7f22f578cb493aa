"""Pixel-level losses: a per-voxel term, averaged over the voxels that take part."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._prepare import Prepared, SegmentationLoss, class_weight_tensor
from .registry import register

__all__ = ["CrossEntropyLoss"]


def voxel_cross_entropy(prep: Prepared) -> torch.Tensor:
    """Per-voxel, per-class cross-entropy terms ``-g log p`` (softmax) or binary CE (sigmoid), ``(B, C', ...)``."""
    if prep.activation == "sigmoid":
        g = prep.target
        return -(g * prep.log_probs + (1 - g) * torch.nn.functional.logsigmoid(-prep.logits))
    return -prep.target * prep.log_probs


@register("ce", "pixel", "Cross-entropy; e.g. Long, Shelhamer, Darrell, FCN, CVPR 2015")
class CrossEntropyLoss(SegmentationLoss):
    r"""Cross-entropy :math:`-\sum_c w_c g_c \log p_c` with softmax (default) or binary CE with sigmoid.

    ``reduction="mean"`` follows ``torch.nn.CrossEntropyLoss``: the weighted mean divides by
    :math:`\sum w_{y_i}` over the voxels that take part (ignored voxels excluded). ``"none"`` returns the
    per-voxel loss ``(B, *spatial)`` (softmax) or ``(B, C, *spatial)`` (sigmoid).

    Takes logits: the activation is part of the loss (``softmax=True`` unless ``sigmoid=True``).
    ``include_background=False`` removes class 0's term (softmax still over all classes).
    Matches ``torch.nn.CrossEntropyLoss`` / ``BCEWithLogitsLoss``; adds label-map or one-hot targets and
    input validation.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = True,
        reduction: str = "mean",
        weight: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(True, to_onehot_y, sigmoid, softmax and not sigmoid, None, reduction, ignore_index)
        self.drop_background = not include_background
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("class_weight", class_weight_tensor(weight), persistent=False)

    def class_weights(self, num_classes: int, device: torch.device) -> torch.Tensor:
        """Per-class weights ``(C,)``: ``weight`` (or ones), with class 0 zeroed when background is excluded."""
        w = torch.ones(num_classes, device=device) if self.class_weight is None else self.class_weight.to(device)
        if w.numel() not in (1, num_classes):
            raise ValueError(f"weight has {w.numel()} entries but the input has {num_classes} classes")
        w = w.expand(num_classes).clone()
        if self.drop_background and num_classes > 1:
            w[0] = 0.0
        return w

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = self.prepare(input, target)
        num_classes = input.shape[1]
        w = self.class_weights(num_classes, input.device).to(prep.logits.dtype)
        if prep.activation == "softmax" and prep.labels is not None:
            # torch's fused kernel: same definition, one pass, no one-hot
            labels = prep.labels if prep.mask is None else torch.where(prep.mask[:, 0] > 0, prep.labels, -100)
            loss = torch.nn.functional.cross_entropy(
                prep.logits,
                labels,
                w,
                ignore_index=-100,
                reduction="sum" if self.reduction == "mean" else self.reduction,
                label_smoothing=self.label_smoothing,
            )
            if self.reduction != "mean":
                return loss
            # torch's weighted mean (Σ loss / Σ w of each voxel's class), but 0 rather than NaN when nothing counts
            voxel_weight = w[labels.clamp_min(0)] * (labels >= 0)
            return loss / voxel_weight.sum().clamp_min(1e-12)
        shape = [1, num_classes] + [1] * (input.ndim - 2)
        w = w.view(shape)
        hard_target = prep.target
        if self.label_smoothing > 0:
            n = 2 if prep.activation == "sigmoid" else num_classes
            prep.target = prep.masked(hard_target * (1 - self.label_smoothing) + self.label_smoothing / n)
        terms = prep.masked(voxel_cross_entropy(prep) * w)
        if prep.activation == "sigmoid":
            if self.reduction == "none":
                return terms
            if self.reduction == "sum":
                return terms.sum()
            return terms.sum() / (prep.voxel_count().sum() * num_classes).clamp_min(1)
        voxel_loss = terms.sum(1)
        if self.reduction == "none":
            return voxel_loss
        if self.reduction == "sum":
            return voxel_loss.sum()
        # torch's weighted mean: divide by the summed weight of each voxel's true class
        return voxel_loss.sum() / (w * hard_target).sum().clamp_min(1e-12)
