"""Lovász losses: the Lovász extension of the Jaccard loss, a convex surrogate optimised on sorted errors.

The Jaccard loss of a class is a submodular function of the set of mispredicted voxels; its Lovász extension
evaluated at the vector of voxel errors is piecewise linear, exact at 0/1 errors, and is computed by sorting the
errors in decreasing order. Only part of each row needs sorting: once every foreground voxel has been passed, the
remaining (background) voxels have weight 0, so the voxels sorted are the foreground and the background voxels whose
error is at least the smallest foreground error (a custom autograd function sorts them once and reuses the order
for the analytic gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.autograd.function import once_differentiable

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
    voxel), so the weights are always finite. (The losses use the same weights in closed form, :func:`_row_weights`.)
    """
    foreground_total = sorted_foreground.sum(-1, keepdim=True)
    intersection = foreground_total - sorted_foreground.cumsum(-1)
    union = foreground_total + (1.0 - sorted_foreground).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.diff(jaccard, dim=-1, prepend=torch.zeros_like(jaccard[..., :1]))


def _errors(values: torch.Tensor, foreground: torch.Tensor, kind: str) -> torch.Tensor:
    """Voxel errors: ``|g - p|`` of probabilities (``"softmax"``), ``max(0, 1 - z (2g - 1))`` of logits
    (``"hinge"``), or the values themselves (``"errors"``)."""
    if kind == "softmax":
        return torch.where(foreground, 1.0 - values, values)
    if kind == "hinge":
        return torch.where(foreground, 1.0 - values, 1.0 + values).clamp_min_(0.0)
    return values


def _sorted_descending(errors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``errors`` (non-negative) in decreasing order, and the order.

    Float32 errors are sorted as int32 keys (a non-negative float's bits order like the float, and torch sorts
    integers several times faster than floats), read back without a gather; other dtypes sort as they are.
    """
    if errors.dtype != torch.float32:
        return torch.sort(errors, descending=True)
    low = 2**31 - 1
    keys, order = torch.sort(low - errors.view(torch.int32))
    return (low - keys).view(torch.float32), order


def _row_weights(sorted_foreground: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor:
    r"""The weights :math:`J_k - J_{k-1}` of one row's head of the order (``total`` = :math:`|F| \ge 1`), in closed
    form, free of the cancellation of differencing :math:`J`: with :math:`a_k` foreground and :math:`b_k` other
    voxels among the first k, a foreground voxel adds :math:`1 / (|F| + b_k)`, another voxel
    :math:`(|F| - a_k) / ((|F| + b_k - 1)(|F| + b_k))`."""
    exact = torch.float32 if sorted_foreground.shape[0] < 2**24 and dtype != torch.float64 else torch.float64
    a = sorted_foreground.cumsum(0, dtype=exact)
    union = torch.arange(1, a.shape[0] + 1, dtype=exact, device=a.device) - a + total  # |F| + b_k
    other = (total - a) / (union * (union - 1))  # union - 1 >= |F| >= 1 after a non-foreground voxel
    return torch.where(sorted_foreground, union.reciprocal(), other).to(dtype)


def _row_terms(
    errors: torch.Tensor, foreground: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """One row's loss, the voxels with a weight (positions, sorted) and their weights, negated on foreground
    voxels (where the error falls as the value rises); None when no voxel has a weight.

    With foreground, a background voxel whose error is below the smallest foreground error comes after every
    foreground voxel, where the Jaccard loss no longer changes: it weighs nothing and moves nobody's weight, so it
    is not sorted; voxels with error 0 add nothing either. Without foreground the Jaccard loss is a 0/1 step, whose
    extension is the largest error (weight 1).
    """
    total = int(foreground.sum())
    if total == 0:
        index = errors.argmax().view(1)
        top = errors.index_select(0, index)
        return (top[0], index, torch.ones(1, dtype=dtype, device=errors.device)) if top[0] > 0 else None
    threshold = errors.masked_select(foreground).min()
    kept = (errors >= threshold) | foreground if threshold > 0 else errors > 0
    index = kept.nonzero().squeeze(1)
    if index.numel() == 0:
        return None
    sorted_errors, order = _sorted_descending(errors.index_select(0, index))
    sorted_foreground = foreground.index_select(0, index).index_select(0, order)
    weight = _row_weights(sorted_foreground, total, dtype)
    loss = torch.dot(sorted_errors.double(), weight.double())  # float64: up to millions of small terms
    return loss, index.index_select(0, order), torch.where(sorted_foreground, -weight, weight)


class _LovaszRows(torch.autograd.Function):
    """Per-row Lovász extension of the Jaccard loss (:func:`_row_terms`), with the analytic gradient.

    Rows are ``(b, c)`` pairs (``per_image``) or classes over the whole batch, each processed on its own so that
    its temporaries stay small. The order found in the forward pass is kept: the gradient with respect to a sorted
    voxel's error is its weight, and the error's derivative with respect to the value is -1 on foreground voxels
    and +1 elsewhere (``softmax`` and ``hinge``, where the error is positive; +1 for ``errors``).
    """

    @staticmethod
    def forward(ctx, values, foreground, valid, per_image: bool, kind: str):
        batch, classes, size = values.shape
        items = [slice(b, b + 1) for b in range(batch)] if per_image else [slice(None)]
        losses = values.new_zeros(len(items), classes)
        positions, weights, rows = [], [], []
        for row_item, item in enumerate(items):
            for c in range(classes):
                row_foreground = foreground[item, c]
                errors = _errors(values[item, c], row_foreground, kind)
                if valid is not None:
                    errors = errors.masked_fill(~valid[item, 0], 0.0)
                terms = _row_terms(errors.reshape(-1), row_foreground.reshape(-1), values.dtype)
                if terms is None:
                    continue
                losses[row_item, c], index, weight = terms
                if per_image:  # one item: the row is contiguous in the flat (B, C, N) tensor
                    positions.append(index + (item.start * classes + c) * size)
                else:  # every item: voxel n of item b sits at (b C + c) N + n
                    positions.append(index + (index // size * (classes - 1) + c) * size)
                weights.append(weight.abs() if kind == "errors" else weight)
                rows.append(row_item * classes + c)
        ctx.shape, ctx.dtype, ctx.rows = values.shape, values.dtype, rows
        ctx.save_for_backward(*positions, *weights)
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        saved, count = ctx.saved_tensors, len(ctx.rows)
        grad_values = grad.new_zeros(ctx.shape, dtype=ctx.dtype)
        flat, row_grads = grad_values.view(-1), grad.reshape(-1)
        for row, position, weight in zip(ctx.rows, saved[:count], saved[count:], strict=True):
            flat.index_copy_(0, position, weight * row_grads[row])
        return grad_values, None, None, None, None


def _lovasz_rows(
    values: torch.Tensor, foreground: torch.Tensor, valid: torch.Tensor | None, per_image: bool, kind: str
) -> torch.Tensor:
    """Per-row Lovász extension ``(B or 1, C)`` of ``(B, C, *spatial)`` probabilities (or logits, ``"hinge"``)."""
    values = values.flatten(2)
    foreground = foreground.flatten(2) > 0
    valid = None if valid is None else valid.flatten(2) > 0
    return _LovaszRows.apply(values, foreground, valid, per_image, kind)


def _check_probabilities(probs: torch.Tensor) -> None:
    """The errors |g - p| and their sorted order are those of probabilities: refuse values outside [0, 1]."""
    lowest, highest = (float(v) for v in torch.aminmax(probs.detach()))
    if lowest < 0.0 or highest > 1.0:  # NaN compares False: the finiteness check names it instead
        raise ValueError(
            f"LovaszSoftmaxLoss got values in [{lowest:.4g}, {highest:.4g}] without softmax or sigmoid, so it would "
            "read them as class probabilities: pass logits with softmax=True, or probabilities in [0, 1]"
        )


def lovasz_extension(errors: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    r"""Lovász extension of the Jaccard loss at ``errors``: :math:`\sum_k e_{(k)} (J_k - J_{k-1})` per row.

    ``errors`` (non-negative) and ``foreground`` are ``(..., N)``; the result is ``(...)``. Every row is sorted
    on its own, and only where it matters (the foreground, and the background voxels with at least the smallest
    foreground error).
    """
    if errors.numel() and float(errors.detach().min()) < 0:
        raise ValueError("lovasz_extension needs non-negative errors (as |g - p| or a hinge's max(0, ·))")
    rows = errors.reshape(-1, 1, errors.shape[-1])
    foreground = foreground.reshape(rows.shape) > 0
    return _LovaszRows.apply(rows, foreground, None, True, "errors").view(errors.shape[:-1])


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
    the loss (as in kornia); ``softmax=False`` takes probabilities, as the authors' reference does (values
    outside [0, 1] raise a ValueError).
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
    nan_propagates = False  # a NaN error can fall outside the sorted voxels (see _row_terms): checked upfront

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
        every = columns == list(range(len(prep.classes)))
        probs = prep.probs if every else prep.probs[:, columns]
        if prep.activation not in ("softmax", "sigmoid"):
            _check_probabilities(probs)
        foreground = prep.target if every else prep.target[:, columns]
        per_class = _lovasz_rows(probs, foreground, prep.mask, self.per_image, "softmax")
        present = foreground.flatten(2).any(-1)
        present = present if self.per_image else present.any(0, keepdim=True)

        scored = torch.zeros(per_class.shape[0], len(prep.classes), dtype=torch.bool, device=per_class.device)
        scored[:, columns] = present if self.classes == "present" else True
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

    nan_propagates = False  # a NaN error can fall outside the sorted voxels (see _row_terms): checked upfront

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
        terms = _lovasz_rows(prep.logits, prep.target, prep.mask, self.per_image, "hinge")
        return reduce(terms, self.reduction, input.ndim - 2)
