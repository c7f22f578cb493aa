"""Lovász losses: the Lovász extension of the Jaccard loss, a convex surrogate optimised on sorted errors.

The Jaccard loss of a class is a submodular function of the set of mispredicted voxels; its Lovász extension
evaluated at the vector of voxel errors is piecewise linear, exact at 0/1 errors, and is computed by sorting the
errors in decreasing order. Rows (a class, or a class of one image) are sorted whole, one 1-D radix sort of int32
keys per row, in blocks of rows of about ``_BLOCK_VOXELS`` voxels whose other steps run as a few passes over the
block; only the head of each sorted row carries weight (once every foreground voxel has been passed the Jaccard loss
stops changing, and voxels with error 0 add nothing), and a custom autograd function keeps that head's order and
weights for the analytic gradient. With a label map the foreground comes from the labels (no one-hot target).
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


_PRUNE_BELOW = 0.4  # a row sorts only its weighted voxels when they are fewer than this share of it
_BLOCK_VOXELS = 2**18  # rows are processed in blocks of about this many voxels, so temporaries stay small
_LOW = 2**31 - 1  # float32 error e sorts descending as the int32 key _LOW - bits(e)


def _blocks(batch: int, classes: int, size: int, per_image: bool) -> list[tuple[int, int, int, int]]:
    """``(b0, b1, c0, c1)`` blocks of rows of about ``_BLOCK_VOXELS`` voxels: whole images (all classes) or classes
    of one image with ``per_image``, classes over the whole batch without."""
    if not per_image:
        step = max(1, _BLOCK_VOXELS // (batch * size))
        return [(0, batch, c, min(c + step, classes)) for c in range(0, classes, step)]
    if classes * size <= _BLOCK_VOXELS:
        step = max(1, _BLOCK_VOXELS // (classes * size))
        return [(b, min(b + step, batch), 0, classes) for b in range(0, batch, step)]
    step = max(1, _BLOCK_VOXELS // size)
    return [(b, b + 1, c, min(c + step, classes)) for b in range(batch) for c in range(0, classes, step)]


def _rows_layout(x: torch.Tensor, per_image: bool) -> torch.Tensor:
    """A ``(b, c, N)`` block as its rows: ``(b, c, N)`` with ``per_image``, ``(c, b, N)`` (a view) without."""
    return x if per_image else x.transpose(0, 1)


def _block_foreground(
    target: torch.Tensor | None,
    labels: torch.Tensor | None,
    class_ids: torch.Tensor | None,
    valid: torch.Tensor | None,
    block: tuple[int, int, int, int],
    per_image: bool,
) -> torch.Tensor:
    """The foreground of a block's rows, bool ``(rows, L)``: from the label map (``labels == class``, ignored voxels
    left out) where there is one, else from the 0/1 target."""
    b0, b1, c0, c1 = block
    if labels is not None:
        ids = class_ids[c0:c1].view(1, -1, 1) if per_image else class_ids[c0:c1].view(-1, 1, 1)
        rows = _rows_layout(labels[b0:b1], per_image)
        if labels.dtype == torch.uint8:  # bytes in, bytes out: many times faster than a comparison into bool
            out = torch.empty(torch.broadcast_shapes(rows.shape, ids.shape), dtype=torch.uint8, device=rows.device)
            foreground = torch.eq(rows, ids, out=out).view(torch.bool)
        else:
            foreground = rows == ids
        if valid is not None:
            foreground &= _rows_layout(valid[b0:b1], per_image)
    else:
        rows = _rows_layout(target[b0:b1, c0:c1], per_image)
        foreground = torch.gt(rows, 0, out=torch.empty(rows.shape, dtype=torch.bool, device=rows.device))
    return foreground.view(-1, foreground.shape[-1] * (1 if per_image else foreground.shape[1]))


def _block_errors(
    values: torch.Tensor, foreground: torch.Tensor, valid: torch.Tensor | None, per_image: bool, kind: str
) -> torch.Tensor:
    """Voxel errors of a block's rows ``(rows, L)``: ``|g - p|`` of probabilities (``"softmax"``),
    ``max(0, 1 - z (2g - 1))`` of logits (``"hinge"``), or the values themselves (``"errors"``); 0 where ignored."""
    values = _rows_layout(values, per_image)
    errors = torch.empty(values.shape, dtype=values.dtype, device=values.device)
    if kind != "errors":  # g as numbers (bytes to float: far faster than a bool conversion or a select)
        grid = foreground.view(torch.uint8).view(values.shape).to(values.dtype)
    if kind == "softmax":
        torch.sub(values, grid, out=errors).abs_()  # |p - g|: p - 1 is exactly -(1 - p)
    elif kind == "hinge":
        sign = grid.mul_(-2.0).add_(1.0)  # 1 - 2g
        torch.addcmul(values.new_ones(()), values, sign, out=errors).clamp_min_(0.0)  # 1 - z (2g - 1)
    else:
        errors.copy_(values)
    if valid is not None:
        errors.masked_fill_(_rows_layout(valid, per_image).logical_not(), 0.0)
    return errors.view(foreground.shape)


def _sort_keys(errors: torch.Tensor) -> torch.Tensor:
    """Keys whose ascending order is the decreasing order of the (non-negative) ``errors``: for float32 the int32
    ``_LOW - bits(e)`` (a non-negative float's bits order like the float, and torch sorts a 1-D integer tensor by
    radix sort, several times faster than floats), for other dtypes ``-e``."""
    return _LOW - errors.view(torch.int32) if errors.dtype == torch.float32 else errors.neg()


def _errors_of_keys(keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The errors of :func:`_sort_keys` keys."""
    return torch.rsub(keys, _LOW).view(torch.float32) if dtype == torch.float32 else keys.neg()


def _sort_rows(keys: torch.Tensor, weighted: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The head of each row of ``keys`` in ascending order, and the order; ties keep their voxel order.

    One 1-D sort per row (torch's radix sort is 1-D only). A row whose ``weighted`` voxels (``counts``) are fewer
    than ``_PRUNE_BELOW`` of it sorts only those (gathered by a ``nonzero``: worth it only for a small share); its
    tail past them holds the key of error 0 and voxel 0 (weight 0: the backward adds, so a repeated voxel is harmless).
    """
    rows, length = keys.shape
    prune = [count < _PRUNE_BELOW * length for count in counts]
    width = max(counts, default=0) if all(prune) else length
    sorted_keys = keys.new_empty((rows, width))
    order = torch.empty((rows, width), dtype=torch.int64, device=keys.device)
    for r, count in enumerate(counts):
        if not prune[r]:
            torch.sort(keys[r], stable=True, out=(sorted_keys[r], order[r]))
            continue
        index = weighted[r].nonzero().squeeze(1)
        torch.sort(keys[r].index_select(0, index), stable=True, out=(sorted_keys[r, :count], order[r, :count]))
        order[r, :count] = index.index_select(0, order[r, :count])
        sorted_keys[r, count:] = 0.0 if keys.is_floating_point() else _LOW  # the key of error 0
        order[r, count:] = 0
    return sorted_keys, order


def _row_weights(
    foreground: torch.Tensor, totals: torch.Tensor, ranks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The weights :math:`J_k - J_{k-1}` of the head ``(rows, M)`` of rows in sorted order, in closed form, free of
    the cancellation of differencing :math:`J`; ``foreground`` is the sorted 0/1 indicator, ``totals`` =
    :math:`|F|` per row ``(rows, 1)`` and ``ranks`` = 1, 2, ... (at least M of them), all in a float type that holds
    the counts exactly. With :math:`a_k` foreground and :math:`b_k` other voxels among the first k, a foreground
    voxel adds :math:`1 / (|F| + b_k)`, another voxel :math:`(|F| - a_k) / ((|F| + b_k - 1)(|F| + b_k))`; a row
    without foreground weighs its first voxel 1 (its Jaccard loss is a 0/1 step). The two cases are blended as
    :math:`w_o (1 - g) + w_f g` (exact for 0/1 :math:`g`), as fast as a select with an unpredictable mask is not.
    Returns the weights and :math:`1 / (|F| + b_k)`."""
    not_foreground = 1.0 - foreground
    union = not_foreground.cumsum(1).add_(totals)  # |F| + b_k
    other = torch.sub(union, ranks[: union.shape[1]])  # |F| - a_k, as k = a_k + b_k (integers: exact)
    other.div_(torch.sub(union, 1.0).mul_(union))  # union - 1 >= |F| >= 1 after a non-foreground voxel
    other[:, :1].nan_to_num_(nan=1.0)  # 0/0 only at the first voxel: without foreground (else a foreground voxel)
    inverse = union.reciprocal_()
    return other.mul_(not_foreground).addcmul_(inverse, foreground), inverse


def _weighted_voxels(errors: torch.Tensor, foreground: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """The voxels with a weight, ``(rows, L)`` 0/1 in the errors' type: those with a positive error at least the
    smallest foreground error (the others come after every foreground voxel in the order, where the Jaccard loss no
    longer changes, or have error 0); without foreground those with the largest error, if positive (the first of them
    weighs 1)."""
    big = torch.finfo(errors.dtype).max  # errors + (1 - g) big: the errors of the foreground, others above them
    penalty = foreground.view(torch.uint8).to(errors.dtype).mul_(-big).add_(big)  # no select (slow on a mixed mask)
    threshold = torch.add(errors, penalty).amin(1)
    empty = totals == 0
    if bool(empty.any()):
        threshold = torch.where(empty, errors.amax(1), threshold)
    tiny = torch.finfo(errors.dtype).smallest_normal * torch.finfo(errors.dtype).eps  # the smallest positive value
    threshold = threshold.clamp_min_(tiny).unsqueeze(1)
    return torch.ge(errors, threshold, out=torch.empty_like(errors))  # 0/1 numbers: far faster than into bool


def _count(mask: torch.Tensor) -> torch.Tensor:
    """The true entries of each row of a bool ``(rows, L)`` mask, int64: a sum of its bytes in int32 (several times
    faster than ``count_nonzero`` or a bool sum)."""
    dtype = torch.int32 if mask.shape[1] < 2**31 else torch.int64
    return mask.view(torch.uint8).sum(1, dtype=dtype).long()


def _block_terms(
    errors: torch.Tensor, foreground: torch.Tensor, kind: str, ranks: dict[torch.dtype, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A block's per-row losses (float64), foreground counts, and for the backward the order of its weighted head
    ``(rows, M)`` with the weights, negated on foreground voxels (where the error falls as the value rises).

    Each row is sorted whole, or only its weighted voxels when they are few (:func:`_sort_rows`); the weights
    J_k - J_{k-1} come in closed form (:func:`_row_weights`), zero past the row's weighted voxels
    (:func:`_weighted_voxels`). Counts and weights are float32 where that is exact. ``ranks`` caches 1, 2, ..., L
    per float type for the blocks of one call (an ``arange`` is a slow pass). The sorted foreground is read by a
    per-row ``index_select`` as bytes (faster than a ``gather`` and a bool conversion).
    """
    rows, length = errors.shape
    totals = _count(foreground)
    weighted = _weighted_voxels(errors, foreground, totals)
    exact = torch.float32 if length < 2**24 and errors.dtype != torch.float64 else torch.float64  # |F| + b_k <= length
    counts = weighted.sum(1, dtype=exact).long()
    counts = torch.where(totals > 0, counts, counts.clamp_max(1)).tolist()
    sorted_keys, order = _sort_rows(_sort_keys(errors), weighted, counts)
    head = max(counts, default=0)
    sorted_errors, order = _errors_of_keys(sorted_keys[:, :head], errors.dtype), order[:, :head]
    foreground_bytes = foreground.view(torch.uint8)
    sorted_bytes = foreground_bytes.new_empty(order.shape)
    for row in range(rows):
        torch.index_select(foreground_bytes[row], 0, order[row], out=sorted_bytes[row])
    sorted_foreground = sorted_bytes.to(exact)
    if exact not in ranks or ranks[exact].shape[0] < head:
        ranks[exact] = torch.arange(1, length + 1, dtype=exact, device=errors.device)
    weight, inverse = _row_weights(sorted_foreground, totals.unsqueeze(1).to(exact), ranks[exact])
    if kind != "errors":  # w - 2 g / (|F| + b_k): -w on foreground voxels (there w = 1 / (|F| + b_k)), exactly
        signed = torch.addcmul(weight, inverse, sorted_foreground, value=-2.0)
    for row, count in enumerate(counts):
        weight[row, count:] = 0.0
        if kind != "errors":
            signed[row, count:] = 0.0
    weight = weight.to(errors.dtype)
    losses = torch.bmm(sorted_errors.double().unsqueeze(1), weight.double().unsqueeze(2)).view(rows)  # float64 sums
    return losses, totals, order, weight if kind == "errors" else signed.to(errors.dtype)


class _LovaszRows(torch.autograd.Function):
    """Per-row Lovász extension of the Jaccard loss (:func:`_block_terms`), with the analytic gradient.

    Rows are ``(b, c)`` pairs (``per_image``) or classes over the whole batch, taken in blocks of about
    ``_BLOCK_VOXELS`` voxels (:func:`_blocks`) so that temporaries stay small. The order found in the forward pass is
    kept: the gradient with respect to a sorted voxel's error is its weight, and the error's derivative with respect
    to the value is -1 on foreground voxels and +1 elsewhere (``softmax`` and ``hinge``, where the error is positive;
    +1 for ``errors``). Returns the losses and the foreground counts ``(B or 1, C)``.
    """

    @staticmethod
    def forward(ctx, values, target, labels, class_ids, valid, per_image: bool, kind: str):
        batch, classes, size = values.shape
        shape = (batch if per_image else 1, classes)
        losses = values.new_zeros(shape)
        totals = torch.zeros(shape, dtype=torch.int64, device=values.device)
        blocks, saved, ranks = _blocks(batch, classes, size, per_image), [], {}
        for b0, b1, c0, c1 in blocks:
            foreground = _block_foreground(target, labels, class_ids, valid, (b0, b1, c0, c1), per_image)
            block_valid = None if valid is None else valid[b0:b1]
            errors = _block_errors(values[b0:b1, c0:c1], foreground, block_valid, per_image, kind)
            out = (slice(b0, b1) if per_image else slice(0, 1), slice(c0, c1))
            row_losses, row_totals, order, weight = _block_terms(errors, foreground, kind, ranks)
            losses[out] = row_losses.view(losses[out].shape)
            totals[out] = row_totals.view(totals[out].shape)
            saved += [order, weight]
        ctx.blocks, ctx.shape, ctx.per_image = blocks, values.shape, per_image
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(totals)
        return losses, totals

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _grad_totals):
        batch, classes, size = ctx.shape
        grad_values = grad.new_empty((batch, classes, size))  # every block writes all of its voxels
        saved = ctx.saved_tensors
        for (b0, b1, c0, c1), order, weight in zip(ctx.blocks, saved[::2], saved[1::2], strict=True):
            row_grad = weight * (grad[b0:b1, c0:c1] if ctx.per_image else grad[0, c0:c1]).reshape(-1, 1)
            if ctx.per_image:  # the block's rows are contiguous in (B, C, N)
                grad_values[b0:b1, c0:c1].zero_().view(order.shape[0], -1).scatter_add_(1, order, row_grad)
            else:  # rows (c, b N + n) go back to (b, c, n) block by block, in a block-sized buffer
                rows = grad.new_zeros((c1 - c0, batch, size))
                rows.view(order.shape[0], -1).scatter_add_(1, order, row_grad)
                grad_values[:, c0:c1] = rows.transpose(0, 1)
        return grad_values, None, None, None, None, None, None


def _lovasz_rows(
    values: torch.Tensor,
    foreground: torch.Tensor,
    valid: torch.Tensor | None,
    per_image: bool,
    kind: str,
    labels: torch.Tensor | None = None,
    class_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row Lovász extension ``(B or 1, C)`` of ``(B, C, *spatial)`` probabilities (or logits, ``"hinge"``), and
    the foreground voxel counts of the rows. The foreground is ``foreground > 0``, or with ``labels`` (the
    ``(B, *spatial)`` label map) ``labels == class_ids[c]`` where ``valid``: then ``foreground`` is not read."""
    values = values.flatten(2)
    valid = None if valid is None else valid.flatten(2) > 0
    if labels is not None:
        labels = labels.reshape(labels.shape[0], 1, -1)
        if labels.numel() and labels.dtype != torch.uint8 and max(class_ids, default=0) < 256:
            lowest, highest = (int(v) for v in torch.aminmax(labels))
            if lowest >= 0 and highest < 256:  # bytes: each class's comparison reads 8x less than int64 labels
                labels = labels.to(torch.uint8)
        ids = torch.tensor(list(class_ids), dtype=labels.dtype, device=labels.device)
        return _LovaszRows.apply(values, None, labels, ids, valid, per_image, kind)
    return _LovaszRows.apply(values, foreground.flatten(2), None, None, valid, per_image, kind)


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
    on its own; the weights reach only the foreground and the background voxels with a positive error at least the
    smallest foreground error.
    """
    if errors.numel() and float(errors.detach().min()) < 0:
        raise ValueError("lovasz_extension needs non-negative errors (as |g - p| or a hinge's max(0, ·))")
    rows = errors.reshape(-1, 1, errors.shape[-1])
    losses, _ = _lovasz_rows(rows, foreground.reshape(rows.shape) > 0, None, True, "errors")
    return losses.view(errors.shape[:-1])


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
    Equal errors keep their voxel order (a stable sort), so the gradient at ties is deterministic.

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
    nan_propagates = False  # a NaN error would break the sort's integer keys (see _sort_keys): checked upfront

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
        if prep.activation == "softmax" and prep.labels is not None:  # hard labels: no one-hot target
            ids = [prep.classes[c] for c in columns]
            per_class, totals = _lovasz_rows(probs, probs, prep.mask, self.per_image, "softmax", prep.labels, ids)
        else:
            foreground = prep.target if every else prep.target[:, columns]
            per_class, totals = _lovasz_rows(probs, foreground, prep.mask, self.per_image, "softmax")
        present = totals > 0

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

    nan_propagates = False  # a NaN error would break the sort's integer keys (see _sort_keys): checked upfront

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
        if prep.labels is not None and not prep.binary:  # a label map over C classes: no one-hot target
            args = (prep.logits, prep.logits, prep.mask, self.per_image, "hinge", prep.labels, prep.classes)
        else:
            args = (prep.logits, prep.target, prep.mask, self.per_image, "hinge")
        terms, _ = _lovasz_rows(*args)
        return reduce(terms, self.reduction, input.ndim - 2)
