"""Lovász losses: the Lovász extension of the Jaccard loss, a convex surrogate optimised on sorted errors.

The Jaccard loss of a class is a submodular function of the set of mispredicted voxels; its Lovász extension
evaluated at the vector of voxel errors is piecewise linear, exact at 0/1 errors, and is computed by sorting the
errors in decreasing order. All classes (and images) are rows of one tensor sorted in a single ``torch.sort``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._prepare import Prepared, SegmentationLoss, apply_class_weight, class_weight_tensor, reduce
from .registry import register

__all__ = ["LovaszHingeLoss", "LovaszSoftmaxLoss", "lovasz_extension", "lovasz_jaccard_weights"]

CLASS_CHOICES = ("present", "all")


def lovasz_jaccard_weights(sorted_foreground: torch.Tensor) -> torch.Tensor:
    r"""Weights :math:`J_k - J_{k-1}` of the Lovász extension of the Jaccard loss, along the last dim.

    ``sorted_foreground`` holds each row's foreground indicator :math:`g` ordered by decreasing error. With the
    :math:`k` largest errors taken as the mispredicted set :math:`M_k`,
    :math:`J_k = 1 - \frac{|F| - \sum_{i \le k} g_i}{|F| + \sum_{i \le k} (1 - g_i)} = \frac{|M_k|}{|F \cup M_k|}`
    and :math:`J_0 = 0`. The denominator is at least 1 (a row without foreground starts with a non-foreground
    voxel), so the weights are always finite.
    """
    foreground_total = sorted_foreground.sum(-1, keepdim=True)
    intersection = foreground_total - sorted_foreground.cumsum(-1)
    union = foreground_total + (1.0 - sorted_foreground).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.diff(jaccard, dim=-1, prepend=torch.zeros_like(jaccard[..., :1]))


def lovasz_extension(errors: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    r"""Lovász extension of the Jaccard loss at ``errors``: :math:`\sum_k e_{(k)} (J_k - J_{k-1})` per row.

    ``errors`` and ``foreground`` are ``(..., N)``; every row (class, image) is sorted in one batched call and the
    result is ``(...)``. Voxels with error 0 and no foreground (ignored voxels) sort last and add nothing.
    """
    sorted_errors, order = torch.sort(errors, dim=-1, descending=True)
    weights = lovasz_jaccard_weights(foreground.gather(-1, order))
    return (sorted_errors * weights).sum(-1)


def _rows(x: torch.Tensor, per_image: bool) -> torch.Tensor:
    """``(B, C, *spatial)`` -> ``(B, C, N)`` per image, or ``(1, C, B*N)`` for the whole batch."""
    if per_image:
        return x.flatten(2)
    return x.transpose(0, 1).flatten(1).unsqueeze(0)


@register("lovasz", "region", "Berman, Rannen Triki, Blaschko, The Lovász-Softmax loss, CVPR 2018")
class LovaszSoftmaxLoss(SegmentationLoss):
    r"""Lovász-Softmax loss: the Lovász extension of each class's Jaccard loss at the errors :math:`|g_c - p_c|`.

    .. math::

        \mathcal{L}_c = \sum_{k=1}^{N} e_{c,(k)} \left(J_c(M_k) - J_c(M_{k-1})\right),\quad
        J_c(M) = \frac{|M|}{|F_c \cup M|},\quad e_c = |g_c - p_c|

    with the errors sorted in decreasing order, :math:`M_k` the voxels of the :math:`k` largest errors and
    :math:`F_c` the voxels of class :math:`c`; the loss is the mean of :math:`\mathcal{L}_c` over the scored classes.

    Defaults follow the authors' reference ``lovasz_softmax``: ``per_image=False`` (the whole batch is one set of
    voxels) and ``classes="present"`` (only classes present in the target are scored). ``classes="all"`` scores
    every class, ``classes=[...]`` the listed class indices. N-D (2D, 3D). Takes logits: the softmax is part of
    the loss (as in kornia); ``softmax=False`` takes probabilities, as the authors' reference does.
    Unlike the reference, the errors are not cast to float32: float64 input stays float64 (gradcheck holds).

    Empty classes: with ``"present"`` a class absent from the target (of the image, with ``per_image``) is not
    scored. With ``"all"`` it is: its Jaccard loss is 0 or 1 (a step), whose Lovász extension is the largest
    probability of that class, so its gradient reaches one voxel only. With ``per_image=True`` an image with no
    scored class (only background with ``include_background=False``, or every voxel ignored) is left out of the
    mean over images; the authors' reference counts it as 0, which shrinks the loss by the batch size. A batch
    with nothing scored gives 0 (finite, zero gradient). An image with only background is scored on class 0 alone
    (``"present"``): its loss is then the mean over voxels of :math:`1 - p_0`.

    ``weight`` multiplies each class's term and the mean still divides by the number of scored classes (as in
    kornia). ``reduction="none"`` returns ``(B, C', 1, ...)`` with ``per_image`` and ``(1, C', 1, ...)`` without
    it, 0 for classes not scored. ``ignore_index`` voxels take no part.

    A single channel ``(B, 1, *spatial)`` is the binary problem: the foreground probability is the sigmoid of the
    logit (the softmax over the logits ``(0, x)``), and only the foreground class is scored; with
    ``softmax=False`` the input must be probabilities in [0, 1] (others raise ValueError).

    Reference: Berman, Rannen Triki, Blaschko, "The Lovász-Softmax loss: A tractable surrogate for the
    optimization of the intersection-over-union measure in neural networks", CVPR 2018.
    Parity: ``kornia.losses.LovaszSoftmaxLoss`` with ``per_image=True, classes="all"`` (2D).
    """

    warns_on_single_channel_softmax = False  # softmax is this loss's own default: one channel is binary by definition

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = True,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        per_image: bool = False,
        classes: str | Sequence[int] = "present",
        reduction: str = "mean",
        weight: Sequence[float] | float | torch.Tensor | None = None,
        ignore_index: int | None = None,
    ) -> None:
        softmax = softmax and not sigmoid and other_act is None
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, ignore_index)
        if isinstance(classes, str):
            if classes not in CLASS_CHOICES:
                raise ValueError(f"classes must be one of {CLASS_CHOICES} or a list of class indices, got {classes!r}")
        else:
            classes = [int(c) for c in classes]
            if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
                raise ValueError(f"classes must be a non-empty list of distinct non-negative indices, got {classes}")
        self.classes = classes
        self.per_image = bool(per_image)
        self.register_buffer("class_weight", class_weight_tensor(weight), persistent=False)

    def _columns(self, prep: Prepared) -> list[int]:
        """Positions (in the kept channels) of the classes to score."""
        if isinstance(self.classes, str):
            return list(range(len(prep.classes)))
        missing = [c for c in self.classes if c not in prep.classes]
        if missing:
            raise ValueError(
                f"classes {missing} are not among the input's scored classes {prep.classes} "
                "(out of range, or class 0 with include_background=False)"
            )
        return [prep.classes.index(c) for c in self.classes]

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = self.prepare(input, target)
        columns = self._columns(prep)
        probs = prep.probs[:, columns]
        foreground = prep.target[:, columns].to(probs.dtype)
        errors = prep.masked((foreground - probs).abs())
        foreground_rows = _rows(foreground, self.per_image)
        per_class = lovasz_extension(_rows(errors, self.per_image), foreground_rows)

        scored = torch.zeros(per_class.shape[0], len(prep.classes), dtype=torch.bool, device=per_class.device)
        scored[:, columns] = foreground_rows.sum(-1) > 0 if self.classes == "present" else True
        terms = per_class.new_zeros(scored.shape)
        terms[:, columns] = per_class
        terms = apply_class_weight(terms, self.class_weight) * scored

        if self.reduction != "mean":
            return reduce(terms, self.reduction, input.ndim - 2)
        counts = scored.sum(1)
        has_scored = counts > 0
        if not has_scored.any():
            return terms.sum() * 0.0
        return (terms.sum(1)[has_scored] / counts[has_scored]).mean()


@register("lovasz_hinge", "region", "Berman, Rannen Triki, Blaschko, The Lovász-Softmax loss, CVPR 2018")
class LovaszHingeLoss(SegmentationLoss):
    r"""Binary Lovász hinge: the Lovász extension of the Jaccard loss at the hinge errors of the logits.

    .. math::

        \mathcal{L} = \sum_{k=1}^{N} \max(0, e_{(k)}) \left(J(M_k) - J(M_{k-1})\right),\quad
        e = 1 - z\,(2g - 1)

    for logits :math:`z` and binary targets :math:`g`, errors sorted in decreasing order and :math:`J` the
    Jaccard loss of :func:`lovasz_jaccard_weights`. Logits of magnitude at least 1 on the right side give 0.

    One channel is the binary (sigmoid) problem: target ``(B, 1, ...)`` of 0/1. With C channels each channel is
    its own binary problem against its one-hot (or multi-label) target, and the terms are averaged.
    ``per_image=True`` (the authors' reference default and kornia's only mode) scores each image separately and
    averages; ``per_image=False`` scores the batch as one set. ``include_background=False`` drops channel 0 of a
    multi-channel input. ``reduction="none"`` returns ``(B, C', 1, ...)`` (``(1, C', 1, ...)`` without
    ``per_image``). ``ignore_index`` voxels take no part; an image whose voxels are all ignored scores 0.

    Empty classes: an image without foreground has a Jaccard loss of 0 or 1 (a step); its Lovász extension is
    :math:`\max(0, 1 + \max z)`, finite and 0 once every logit is at most -1, with a gradient at one voxel only:
    a small batch of background-only images is trained through its single worst voxel per image.

    Reference: Berman, Rannen Triki, Blaschko, CVPR 2018 (the Lovász hinge of Yu and Blaschko, ICML 2015,
    applied to the Jaccard loss). Parity: ``kornia.losses.LovaszHingeLoss`` (one channel, 2D, per image).
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        per_image: bool = True,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, reduction=reduction, ignore_index=ignore_index)
        self.per_image = bool(per_image)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = self.prepare(input, target)
        foreground = prep.target.to(prep.logits.dtype)
        hinge_errors = prep.masked(torch.relu(1.0 - prep.logits * (2.0 * foreground - 1.0)))
        terms = lovasz_extension(_rows(hinge_errors, self.per_image), _rows(foreground, self.per_image))
        return reduce(terms, self.reduction, input.ndim - 2)
