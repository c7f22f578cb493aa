"""Pixel-level losses: a per-voxel term, averaged over the voxels that take part."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.functional import logsigmoid, nll_loss

from ._aux import checked_map
from ._prepare import (
    Prepared,
    SegmentationLoss,
    accumulation_dtype,
    apply_class_weight,
    chunk_voxels,
    class_weight_tensor,
    prepare,
)
from .registry import register

__all__ = [
    "BalancedCrossEntropyLoss",
    "ConservativeLoss",
    "CrossEntropyLoss",
    "DistancePenalizedCELoss",
    "FocalLoss",
    "TopKLoss",
]


class _SignedFocalTerms(torch.autograd.Function):
    r"""Sigmoid focal terms :math:`-(1 - p_t)^\gamma \log p_t` with 0/1 targets, :math:`p_t = \sigma(z)` of the
    signed logit :math:`z = \pm x` (+ for positives), with the analytic gradient
    :math:`\partial/\partial z = (1 - p_t)^\gamma (\gamma\, p_t \log p_t - (1 - p_t))` from the saved
    :math:`1 - p_t` and :math:`\log p_t` (no autograd chain of ``where``, ``sigmoid``, ``pow``, ``logsigmoid``)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, positive: torch.Tensor, gamma: float) -> torch.Tensor:
        signed = torch.where(positive, logits, -logits)
        log_pt = logsigmoid(signed)
        one_minus_pt = torch.sigmoid(signed.neg_())  # σ(−z): no cancellation for a confident p_t
        terms = one_minus_pt.pow(gamma).mul_(log_pt).neg_()
        ctx.save_for_backward(positive, log_pt, one_minus_pt, logits)
        ctx.gamma = gamma
        return terms

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        positive, log_pt, one_minus_pt, logits = ctx.saved_tensors
        gamma = ctx.gamma
        if torch.is_grad_enabled():  # create_graph: the same formula in tracked ops from the logits
            signed = torch.where(positive, logits, -logits)
            log_pt, one_minus_pt = logsigmoid(signed), torch.sigmoid(-signed)
            dz = ((1.0 - one_minus_pt) * log_pt * gamma - one_minus_pt) * one_minus_pt.pow(gamma) * grad
            return torch.where(positive, dz, -dz), None, None
        # d terms / dz = (1 − p_t)^γ (γ p_t log p_t − (1 − p_t)), p_t = 1 − (1 − p_t)
        dz = (1.0 - one_minus_pt).mul_(log_pt).mul_(gamma).sub_(one_minus_pt).mul_(one_minus_pt.pow(gamma))
        dz.mul_(grad)
        return torch.where(positive, dz, -dz), None, None


#: elements of ``(B, C, N)`` per chunk of :class:`_SigmoidFocalSum`: its few temporaries stay in a core's L2 cache
_CHUNK = 1 << 18


class _SigmoidFocalSum(torch.autograd.Function):
    r"""The weighted sum :math:`\sum_{b,c,i} w_{bci} \big(-(1 - p_t)^\gamma \log p_t\big)` of the sigmoid focal
    terms with 0/1 targets from a label map, without a one-hot target or a ``(B, C, N)`` terms tensor.

    Voxel :math:`i` is a positive of channel :math:`c` when its label is ``first + c``; :math:`p_t = \sigma(z)` of
    the signed logit :math:`z = \pm x` (+ for positives); :math:`w_{bci} = m_{bi}\, a_{bc}` on positives and
    :math:`m_{bi}\, n_{bc}` on negatives (``None``: 1). :math:`\gamma = 0` is the weighted binary cross-entropy.
    The forward runs in cache-sized chunks: every element as a negative (:math:`z = -x`, C-wide), then each voxel's
    label channel (a gather, 1/C of the elements) as a positive, written over it; it computes the gradient
    :math:`\partial/\partial z = w\,(1 - p_t)^\gamma (\gamma\, p_t \log p_t - (1 - p_t))` there too and saves only
    :math:`\partial/\partial x`; the backward scales it. Under ``create_graph`` the gradient is the same formula in
    tracked ops, so higher derivatives stay exact.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        labels: torch.Tensor,
        first: int,
        pos_weight: torch.Tensor | None,
        neg_weight: torch.Tensor | None,
        mask: torch.Tensor | None,
        gamma: float,
    ) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            total, grad = _sigmoid_focal_chunks(
                logits, labels, first, pos_weight, neg_weight, mask, gamma, ctx.needs_input_grad[0]
            )
        ctx.save_for_backward(grad, logits, labels, pos_weight, neg_weight, mask)
        ctx.first, ctx.gamma = first, gamma
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad, logits, labels, pos_weight, neg_weight, mask = ctx.saved_tensors
        if grad is None:
            return (None,) * 7
        if torch.is_grad_enabled():  # create_graph: the same gradient in tracked ops from the logits
            classes = torch.arange(ctx.first, ctx.first + logits.shape[1], device=logits.device)
            pos = labels.unsqueeze(1) == classes.view(1, -1, 1)
            z = torch.where(pos, logits, -logits)
            log_pt, one_minus_pt = logsigmoid(z), torch.sigmoid(-z)
            dz = ((1.0 - one_minus_pt) * log_pt * ctx.gamma - one_minus_pt) * one_minus_pt.pow(ctx.gamma)
            if pos_weight is None:
                signed = torch.where(pos, 1.0, -1.0).to(logits.dtype)
            else:
                signed = torch.where(pos, pos_weight.unsqueeze(2), -neg_weight.unsqueeze(2))
            signed = signed if mask is None else signed * mask.unsqueeze(1)
            return dz * signed * grad_total, None, None, None, None, None, None
        return grad * grad_total, None, None, None, None, None, None


def _focal_parts(
    z: torch.Tensor, weight: torch.Tensor | None, gamma: float, with_grad: bool, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    r"""For signed logits ``z`` (overwritten): :math:`\log p_t`, the factor :math:`w (1 - p_t)^\gamma` of the term
    (``None`` for 1; else a new tensor of ``z``'s shape) and :math:`-\partial/\partial z` of the weighted term,
    :math:`w (1 - p_t)^\gamma ((1 - p_t) - \gamma p_t \log p_t)` (into ``out`` when given)."""
    log_pt = logsigmoid(z)
    q = torch.sigmoid(z.neg_())  # 1 − p_t = σ(−z): no cancellation for a confident p_t
    if gamma == 0:
        factor = None if weight is None else weight.expand_as(q).contiguous()
    else:
        factor = q * q if gamma == 2 else q.pow(gamma)
        factor = factor if weight is None else factor.mul_(weight)
    if not with_grad:
        return log_pt, factor, None
    if gamma != 0:
        q = torch.addcmul(q, torch.rsub(q, 1.0), log_pt, value=-gamma)
    if factor is None:
        return log_pt, factor, q if out is None else out.copy_(q)
    return log_pt, factor, q.mul_(factor) if out is None else torch.mul(q, factor, out=out)


def _sigmoid_focal_chunks(
    logits: torch.Tensor,
    labels: torch.Tensor,
    first: int,
    pos_weight: torch.Tensor | None,
    neg_weight: torch.Tensor | None,
    mask: torch.Tensor | None,
    gamma: float,
    with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:class:`_SigmoidFocalSum`'s forward: the sum (across chunks in :func:`accumulation_dtype`) and the gradient
    (or ``None``)."""
    c, n = logits.shape[1:]
    total = torch.zeros((), dtype=accumulation_dtype(logits.device), device=logits.device)
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if with_grad else None
    step = chunk_voxels(logits, _CHUNK)
    for start in range(0, n, step):
        part = slice(start, start + step)
        x = logits[:, :, part]
        m = None if mask is None else mask[:, None, part]
        label = labels[:, None, part] - first
        valid = None if first == 0 else (label >= 0) & (label < c)  # a label with no channel has no positive
        index = label if valid is None else label.clamp(0, c - 1)
        # every element as a negative (z = −x): its term, weight and gradient ∂/∂x = −∂/∂z
        weight = None if neg_weight is None else neg_weight.unsqueeze(2).expand_as(x)
        weight = m if weight is None else (weight if m is None else weight * m)
        out = None if grad is None else grad[:, :, part]
        log_pt, factor, d_neg = _focal_parts(x.neg(), weight, gamma, with_grad, out)
        # each voxel's label channel as a positive (z = x, ∂/∂x = ∂/∂z), written over the negative's
        x_pos = x.gather(1, index)
        weight_pos = None if pos_weight is None else pos_weight.unsqueeze(2).expand_as(x).gather(1, index)
        weight_pos = m if weight_pos is None else (weight_pos if m is None else weight_pos * m)
        if valid is not None:
            weight_pos = valid.to(x.dtype) if weight_pos is None else weight_pos * valid
        log_pt_pos, factor_pos, d_pos = _focal_parts(x_pos, weight_pos, gamma, with_grad)
        if d_neg is not None:
            d_pos = d_pos.neg_()
            if valid is not None:
                d_pos = torch.where(valid, d_pos, d_neg.gather(1, index))
            d_neg.scatter_(1, index, d_pos)
        factor = torch.ones_like(log_pt) if factor is None else factor
        keep = 0.0 if valid is None else torch.where(valid, 0.0, factor.gather(1, index))
        factor.scatter_(1, index, keep)  # the label channel counts as a positive only
        total -= torch.dot(factor.flatten(), log_pt.flatten())
        total -= log_pt_pos.sum() if factor_pos is None else torch.dot(factor_pos.flatten(), log_pt_pos.flatten())
    return total.to(logits.dtype), grad


def label_positives(prep: Prepared) -> torch.Tensor:
    """Voxels of each kept class over the batch ``(C',)`` from the label map, ignored voxels left out; one channel
    counts the foreground (label 1)."""
    if prep.logits.shape[1] == 1 and len(prep.classes) == 1 and prep.classes[0] == 0:
        return prep.masked(prep.labels.unsqueeze(1).to(prep.logits.dtype)).sum().view(1)
    return prep.label_counts()[prep.classes]


def sigmoid_focal_sum(
    prep: Prepared, gamma: float, pos_weight: torch.Tensor | None = None, neg_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """:class:`_SigmoidFocalSum` of the kept channels against the label map (channel c's positives: label c; one
    channel: label 1), positives weighted by ``pos_weight`` and negatives by ``neg_weight`` ``(B or 1, C')``,
    ignored voxels left out."""
    logits = prep.logits
    b, c = logits.shape[:2]
    one_channel = prep._full_logits.shape[1] == 1
    first = 1 if one_channel else prep.classes[0]
    if pos_weight is not None:
        pos_weight = pos_weight.to(logits.dtype).expand(b, c).contiguous()
        neg_weight = neg_weight.to(logits.dtype).expand(b, c).contiguous()
    mask = None if prep.mask is None else prep.mask.reshape(b, -1)
    return _SigmoidFocalSum.apply(
        logits.reshape(b, c, -1), prep.labels.reshape(b, -1), first, pos_weight, neg_weight, mask, gamma
    )


def voxel_cross_entropy(prep: Prepared) -> torch.Tensor:
    """Per-voxel, per-class cross-entropy terms ``-g log p`` (exclusive classes) or binary CE
    ``-[g log p + (1 - g) log(1 - p)]`` (sigmoid, or a single channel), ``(B, C', ...)``."""
    if prep.binary:
        g = prep.target
        return -(g * prep.log_probs + (1 - g) * prep.log_one_minus_probs)
    return -prep.target * prep.log_probs


def prepare_exclusive(loss: SegmentationLoss, input: torch.Tensor, target: torch.Tensor) -> Prepared:
    """Prepare mutually exclusive classes, all kept: softmax over C > 1 channels, sigmoid for one channel
    (the shared single-channel rule, without its warning: the softmax is the loss's own)."""
    return prepare(
        input,
        target,
        softmax=True,
        ignore_index=loss.ignore_index,
        loss_name=loss.loss_name,
        warn_single_channel_softmax=False,
    )


def reduce_over_voxels(loss: torch.Tensor, prep: Prepared, reduction: str) -> torch.Tensor:
    """``"none"``: ``loss`` as is; ``"sum"``: its sum; ``"mean"``: its sum over the number of voxels that take
    part (the batch's voxels minus the ignored ones), whatever the number of class channels ``loss`` has."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / prep.voxel_count().sum().clamp_min(1)


@register("ce", "pixel", "Cross-entropy; e.g. Long, Shelhamer, Darrell, FCN, CVPR 2015")
class CrossEntropyLoss(SegmentationLoss):
    r"""Cross-entropy :math:`-\sum_c w_c g_c \log p_c` with softmax (default) or binary CE with sigmoid.

    ``reduction="mean"`` follows ``torch.nn.CrossEntropyLoss``: the weighted mean divides by
    :math:`\sum w_{y_i}` over the voxels that take part (ignored voxels excluded). ``"none"`` returns the
    per-voxel loss ``(B, *spatial)`` (softmax) or ``(B, C, *spatial)`` (sigmoid, and any single channel).

    Takes logits: the activation is part of the loss (``softmax=True`` unless ``sigmoid=True``).
    ``include_background=False`` removes class 0's term (softmax still over all classes).
    Matches ``torch.nn.CrossEntropyLoss`` / ``BCEWithLogitsLoss``; adds label-map or one-hot targets and
    input validation. Soft targets in [0, 1] give :math:`-\sum_c w_c g_c \log p_c` (torch's class-probability
    targets; the weighted mean divides by :math:`\sum_i \sum_c w_c g_{ic}`, the voxel count when unweighted).

    A single channel ``(B, 1, *spatial)`` is binary whatever the flags: its logit is the foreground's, and the
    loss is ``BCEWithLogitsLoss`` (the two-class softmax CE of the logits ``(0, x)``, the same number); with
    ``softmax=False, sigmoid=False`` it is the binary CE of probabilities in [0, 1] (others raise ValueError).
    """

    accepts_soft_target = True

    warns_on_single_channel_softmax = False  # softmax is this loss's own default: one channel is BCE by definition

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
            torch_reduction = "sum" if self.reduction == "mean" else self.reduction
            if prep.shared and self.label_smoothing == 0:  # cross_entropy = nll_loss(log_softmax): the block's one
                loss = nll_loss(prep.log_probs, labels, w, ignore_index=-100, reduction=torch_reduction)
            else:
                loss = torch.nn.functional.cross_entropy(
                    prep.logits,
                    labels,
                    w,
                    ignore_index=-100,
                    reduction=torch_reduction,
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
            n = 2 if prep.binary else num_classes
            prep.target = prep.masked(hard_target * (1 - self.label_smoothing) + self.label_smoothing / n)
        terms = prep.masked(voxel_cross_entropy(prep) * w)
        if prep.binary:
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


def voxel_nll(prep: Prepared) -> torch.Tensor:
    """Per-voxel :math:`-\\log p_t` of the true class, ``(B, *spatial)``, 0 at ignored voxels.

    ``prep`` comes from :func:`prepare_exclusive`: torch's fused cross-entropy for softmax (no one-hot),
    binary CE for a single sigmoid channel.
    """
    if prep.binary:
        return prep.masked(voxel_cross_entropy(prep))[:, 0]
    labels = prep.labels if prep.mask is None else torch.where(prep.mask[:, 0] > 0, prep.labels, -100)
    if prep.shared:  # the log-softmax of the shared_preparation block
        return nll_loss(prep.log_probs, labels, ignore_index=-100, reduction="none")
    return torch.nn.functional.cross_entropy(prep.logits, labels, ignore_index=-100, reduction="none")


@register("balanced_ce", "pixel", "Xie & Tu, Holistically-Nested Edge Detection (HED), ICCV 2015")
class BalancedCrossEntropyLoss(SegmentationLoss):
    r"""Class-balanced binary cross-entropy of HED, one-vs-rest per class channel (sigmoid).

    .. math:: L_c = -\big[\beta_c\, g_c \log p_c + (1 - \beta_c)(1 - g_c) \log(1 - p_c)\big],
        \qquad \beta_c = \frac{|Y^-_c|}{|Y^+_c| + |Y^-_c|}

    with :math:`p_c = \sigma(x_c)` and :math:`\beta_c` the fraction of negatives of class :math:`c` among the
    voxels that take part, counted over the whole batch (HED's Eq. 2; computed from the target, so it carries
    no gradient). A single channel is the binary problem of the paper; with C channels each class is its own
    binary problem (multi-label one-hot targets are accepted).

    ``reduction="mean"`` divides the sum by (voxels that take part) × (classes kept), as
    ``pytorch_toolbelt.losses.BalancedBCEWithLogitsLoss`` (gamma=1) does without ignored voxels; ``"none"``
    returns the per-voxel, per-class terms ``(B, C', *spatial)``, 0 at ignored voxels.

    Empty classes: a class absent from the batch has :math:`\beta_c = 1`, so its negative term has weight 0
    and it contributes nothing (nor does a class that fills every voxel); that is the definition, not a guard.

    Reference: Xie & Tu, "Holistically-Nested Edge Detection", ICCV 2015. No parameters beyond MONAI's
    common ones; takes logits (the sigmoid is part of the loss). Soft targets in [0, 1] are accepted (β from their
    sums).
    """

    accepts_soft_target = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, True, False, None, reduction, ignore_index)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = self.prepare(input, target)
        num_voxels = prep.voxel_count().sum()
        if prep.labels is not None and self.reduction != "none":  # 0/1 targets: one fused weighted-BCE pass
            beta = (num_voxels - label_positives(prep)) / num_voxels.clamp_min(1)
            total = sigmoid_focal_sum(prep, 0.0, beta.unsqueeze(0), (1 - beta).unsqueeze(0))
            return total if self.reduction == "sum" else total / (num_voxels * beta.numel()).clamp_min(1)
        g = prep.target
        positives = g.sum([0, *prep.spatial_dims])
        beta = ((num_voxels - positives) / num_voxels.clamp_min(1)).view(1, -1, *([1] * len(prep.spatial_dims)))
        if prep.labels is not None:  # 0/1 targets: one log σ of the signed logit (x for positives, −x else)
            positive = g > 0
            signed = torch.where(positive, prep.logits, -prep.logits)
            terms = -torch.where(positive, beta, 1 - beta) * logsigmoid(signed)
        else:
            terms = -(beta * g * prep.log_probs + (1 - beta) * (1 - g) * logsigmoid(-prep.logits))
        terms = prep.masked(terms)
        if self.reduction == "none":
            return terms
        if self.reduction == "sum":
            return terms.sum()
        return terms.sum() / (num_voxels * terms.shape[1]).clamp_min(1)


@register(
    "topk",
    "pixel",
    "Wu, Shen, van den Hengel, Bridging Category-level and Instance-level Semantic Image Segmentation, "
    "arXiv 2016; k=10 as in nnU-Net (Isensee et al., Nature Methods 2021)",
)
class TopKLoss(SegmentationLoss):
    r"""Mean of the k % largest per-voxel cross-entropy values of the batch (online hard-voxel mining).

    .. math:: L = \frac{1}{K} \sum_{i \in \mathrm{top}_K} -\log p_{i, y_i}, \qquad
        K = \max\big(1, \lfloor N k / 100 \rfloor\big)

    over the N voxels of the whole batch that take part, as nnU-Net v2's ``TopKLoss`` does (softmax
    cross-entropy; a single channel uses binary CE with a sigmoid). Unlike nnU-Net, ignored voxels are
    neither candidates nor counted in N, and K is at least one voxel (nnU-Net's mean of an empty selection is
    NaN); with every voxel ignored the loss is 0.

    Default ``k=10`` (%) from nnU-Net's ``nnUNetTrainer_TopK10``. ``reduction="none"`` returns the per-voxel
    CE ``(B, *spatial)`` of the selected voxels and 0 elsewhere; ``"sum"`` their sum, ``"mean"`` sum / K.
    Class-free: an absent class changes nothing. With ``ignore_index`` the count N is read back to the host
    (one synchronisation per call).

    Reference: Wu, Shen, van den Hengel, "Bridging Category-level and Instance-level Semantic Image
    Segmentation", arXiv:1605.06885, 2016; nnU-Net v2 ``nnunetv2/training/loss/robust_ce_loss.py``.
    """

    def __init__(
        self,
        k: float = 10.0,
        to_onehot_y: bool = False,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(True, to_onehot_y, False, True, None, reduction, ignore_index)
        if not 0 < k <= 100:
            raise ValueError(f"k is a percentage of voxels and must be in (0, 100], got {k}")
        self.k = float(k)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = prepare_exclusive(self, input, target)
        nll = voxel_nll(prep).flatten()
        if prep.mask is None:
            num_voxels = nll.numel()
        else:
            taking_part = prep.mask.flatten() > 0
            num_voxels = int(taking_part.sum())
            nll = nll.masked_fill(~taking_part, float("-inf"))  # ignored voxels are never selected
        num_selected = min(num_voxels, max(1, int(num_voxels * self.k / 100)))
        top = torch.topk(nll, num_selected, sorted=False)
        if self.reduction == "none":
            return torch.zeros_like(nll).scatter(0, top.indices, top.values).view(input.shape[0], *input.shape[2:])
        total = top.values.sum()
        return total if self.reduction == "sum" else total / max(num_selected, 1)


@register("focal", "pixel", "Lin, Goyal, Girshick, He, Dollár, Focal Loss for Dense Object Detection, ICCV 2017")
class FocalLoss(SegmentationLoss):
    r"""Focal loss :math:`-\alpha_t (1 - p_t)^\gamma \log p_t`, sigmoid (default) or softmax, as MONAI's ``FocalLoss``.

    Sigmoid (``use_softmax=False``): each channel is a binary problem, :math:`p_t = p` where :math:`g = 1` and
    :math:`1 - p` where :math:`g = 0` (``torchvision.ops.sigmoid_focal_loss``'s terms). Softmax
    (``use_softmax=True``): :math:`-\alpha_c w_c\, g_c (1 - p_c)^\gamma \log p_c` per voxel and class. Both take
    logits. Same arguments, defaults and numbers as MONAI's ``FocalLoss``; soft targets in [0, 1] are accepted (the
    binary cross-entropy and softmax terms are defined for them).

    Reductions (MONAI's), over the per-class terms ``(B, C', *spatial)``: ``"none"`` returns them; ``"mean"``
    divides their sum by voxels × classes (for the softmax the C' − 1 terms of the other classes are 0, so this is
    the per-voxel focal loss over C'; γ = 0 gives ``cross_entropy / C'``); ``"sum"`` averages each item and class over
    the spatial dims, then sums (MONAI's backward-compatible definition). With ``ignore_index`` ignored voxels count
    nowhere: ``"mean"`` divides by the voxels that take part × classes (MONAI divides by the voxels only: see
    docs/monai_differences.md). As in MONAI, ``include_background=False`` with softmax drops channel 0 *before*
    the softmax. A ``(B, C)`` input (no spatial dims, classification) is read as ``(B, C, 1)``.

    One channel is binary (medseg's single-channel rule): ``use_softmax=True`` computes the sigmoid focal loss, with a
    warning (MONAI's softmax over one channel is 1 and its loss always 0).

    Args:
        gamma: focusing exponent γ ≥ 0; 2 from Lin et al. (γ = 0 gives BCE / CE).
        alpha: α-balancing. Sigmoid: a scalar in [0, 1] weighs positives by α and negatives by 1 − α (Lin et al.,
            torchvision use 0.25), a sequence weighs class c's positives by α_c. Softmax: a scalar gives class 0
            weight 1 − α and the others α (needs ``include_background=True``: MONAI warns and drops α there, medseg
            raises), a sequence one weight per kept class. Default ``None``: no α.
        weight: per-class weight (or one scalar) multiplied into each class's terms (MONAI's ``weight``).
        use_softmax: the softmax over the classes instead of a sigmoid per channel (MONAI's flag and default).

    Empty classes: an absent class adds nothing with softmax; with sigmoid only its negative terms,
    small when it is predicted absent.

    Reference: Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", ICCV 2017.
    """

    accepts_soft_target = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | torch.Tensor | None = None,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        reduction: str = "mean",
        use_softmax: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, not use_softmax, use_softmax, None, reduction, ignore_index)
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        self.gamma = float(gamma)
        self.use_softmax = use_softmax
        alpha_tensor = class_weight_tensor(alpha, "alpha")
        if alpha_tensor is not None and alpha_tensor.ndim == 0 and alpha_tensor > 1:
            raise ValueError(f"a scalar alpha must be in [0, 1] (it weighs one side by 1 - alpha), got {float(alpha)}")
        if alpha_tensor is not None and alpha_tensor.ndim == 0 and use_softmax and not include_background:
            raise ValueError(
                "a scalar alpha weighs class 0 by 1 - alpha and the others by alpha, but include_background=False "
                "drops class 0; pass one alpha per kept class instead"
            )
        self.register_buffer("alpha", alpha_tensor, persistent=False)
        self.register_buffer("class_weight", class_weight_tensor(weight), persistent=False)

    def alpha_factor(self, g: torch.Tensor, use_softmax: bool) -> torch.Tensor | None:
        """α_t broadcastable against the per-class terms, or ``None`` without α."""
        if self.alpha is None:
            return None
        alpha = self.alpha.to(g)
        num_classes = g.shape[1]
        if alpha.ndim == 1 and alpha.numel() != num_classes:
            raise ValueError(
                f"the length of alpha ({alpha.numel()}) must match the number of classes the loss keeps "
                f"({num_classes}; with include_background=False class 0 is not one of them)"
            )
        per_class = [1, num_classes] + [1] * (g.ndim - 2)
        if use_softmax:
            if alpha.ndim == 0:
                alpha = torch.cat([1 - alpha.view(1), alpha.expand(num_classes - 1)])
            return alpha.view(per_class)
        if alpha.ndim == 0:
            return alpha * g + (1 - alpha) * (1 - g)
        return 1 + (alpha.view(per_class) - 1) * g  # α_c on positives, 1 on negatives (MONAI)

    def class_table(self, like: torch.Tensor, use_softmax: bool, positive: bool = True) -> torch.Tensor:
        """α (of the positives, or of the negatives for ``positive=False``; softmax: of each class) times the class
        weight, per kept class ``(C',)`` of ``like`` ``(B, C', ...)``, checked as :meth:`alpha_factor` and
        ``apply_class_weight`` check them."""
        num_classes = like.shape[1]
        side = torch.full((1, num_classes, 1), float(positive), dtype=like.dtype, device=like.device)
        alpha = self.alpha_factor(side, use_softmax)
        table = torch.ones_like(side) if alpha is None else alpha.expand_as(side)
        return apply_class_weight(table, self.class_weight).view(num_classes)

    def reduce_item_sums(self, item_sums: torch.Tensor, prep: Prepared, num_classes: int) -> torch.Tensor:
        """MONAI's ``"mean"`` (all terms over voxels × classes) or ``"sum"`` (spatial means summed) of per-item sums."""
        count = prep.voxel_count()
        if self.reduction == "sum":
            return (item_sums / count.clamp_min(1)).sum()
        return item_sums.sum() / (count.sum() * num_classes).clamp_min(1)

    def label_map_sigmoid(self, prep: Prepared) -> torch.Tensor:
        """Reduced sigmoid focal loss with 0/1 targets from the label map: :class:`_SigmoidFocalSum` (one fused,
        chunked pass; no one-hot target, no terms tensor)."""
        c = prep.logits.shape[1]
        pos_weight = neg_weight = None
        if self.alpha is not None or self.class_weight is not None or self.reduction == "sum":
            pos_weight = self.class_table(prep.logits, False).unsqueeze(0)
            neg_weight = self.class_table(prep.logits, False, positive=False).unsqueeze(0)
            if self.reduction == "sum":  # MONAI: each item's spatial mean
                scale = 1.0 / prep.voxel_count().clamp_min(1).unsqueeze(1)
                pos_weight, neg_weight = pos_weight * scale, neg_weight * scale
        total = sigmoid_focal_sum(prep, self.gamma, pos_weight, neg_weight)
        if self.reduction == "sum":
            return total
        return total / (prep.voxel_count().sum() * c).clamp_min(1)

    def label_map_softmax(self, prep: Prepared) -> torch.Tensor:
        """Reduced softmax focal loss with hard labels: each voxel's only non-zero term is its label's,
        :math:`-\\alpha_l w_l (1 - p_l)^\\gamma \\log p_l`, from a gather of the log-softmax (no one-hot target)."""
        c = prep.logits.shape[1]
        table = self.class_table(prep.logits, True)
        if self.include_background:
            log_p = prep.label_log_prob()
        else:  # MONAI's rule: the softmax over the kept classes; class 0's voxels have no term
            table = torch.cat([table.new_zeros(1), table])
            log_p = torch.log_softmax(prep.logits, 1).gather(1, (prep.labels - 1).clamp_min(0).unsqueeze(1))
        voxel_weight = prep.masked(table[prep.labels].unsqueeze(1))
        terms = voxel_weight * (-torch.expm1(log_p)).pow(self.gamma) * log_p
        return self.reduce_item_sums(-terms.flatten(1).sum(1), prep, c)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.Tensor) and input.ndim == 2:  # (B, C) scores: one voxel per item, as MONAI
            loss = self.forward(input.unsqueeze(-1), target.unsqueeze(-1) if target.ndim == 2 else target)
            return loss.squeeze(-1) if self.reduction == "none" else loss
        prep = self.prepare(input, target)
        use_softmax = prep.activation == "softmax"
        if prep.labels is not None and self.reduction != "none":  # hard labels: no one-hot, no terms tensor
            return self.label_map_softmax(prep) if use_softmax else self.label_map_sigmoid(prep)
        g = prep.target
        if use_softmax:
            # MONAI's rule: without background the softmax runs over the kept classes only
            log_p = prep.log_probs if self.include_background else torch.log_softmax(prep.logits, 1)
            terms = -g * (1 - log_p.exp()).pow(self.gamma) * log_p
        elif prep.labels is not None:  # 0/1 targets: p_t = σ(s) with the signed logit s = x for positives, −x else
            terms = _SignedFocalTerms.apply(prep.logits, g > 0, self.gamma)  # fewer passes, same terms
        else:
            x = prep.logits
            log_pt = g * logsigmoid(x) + (1 - g) * logsigmoid(-x)
            one_minus_pt = torch.sigmoid(x * (1 - 2 * g))  # σ(−x) for positives, σ(x) for negatives: no cancellation
            terms = -one_minus_pt.pow(self.gamma) * log_pt
        alpha_t = self.alpha_factor(g, use_softmax)
        if alpha_t is not None:
            terms = alpha_t * terms
        terms = prep.masked(apply_class_weight(terms, self.class_weight))
        if self.reduction == "none":
            return terms
        if self.reduction == "sum":  # MONAI: the spatial mean of each item and class, summed
            return (terms.flatten(2).sum(-1) / prep.voxel_count().clamp_min(1).unsqueeze(1)).sum()
        return terms.sum() / (prep.voxel_count().sum() * terms.shape[1]).clamp_min(1)


@register(
    "dpce",
    "pixel",
    "Calivá, Iriondo, Martinez, Majumdar, Pedoia, Distance Map Loss Penalty Term for Semantic Segmentation, MIDL 2019",
)
class DistancePenalizedCELoss(SegmentationLoss):
    r"""Distance-penalised cross-entropy :math:`(1 + \Phi) \cdot \mathrm{CE}`: errors near boundaries cost more.

    .. math:: L = \frac{1}{N} \sum_i \big(1 + \Phi_{y_i}(i)\big)\,\big(-\log p_{i, y_i}\big)

    :math:`\Phi` is the ground truth's distance map inverted and max-normalised (1 at the boundary, decaying to
    0 far from it), read from ``forward(input, target, dist=...)``: the ``(B, C, *spatial)`` class-wise map of
    the distance transform in mode ``penalty``, computed once per sample by a cached transform. A voxel is
    weighted by the map of its *true* class, :math:`\Phi_{y_i}(i)`: its closeness to the boundary of the
    structure it belongs to (the element-wise product :math:`(1 + \Phi) \odot` CE of the paper, the CE being
    non-zero only in the true class's channel). A ``(B, 1, *spatial)`` map is used as is for every voxel.
    Softmax cross-entropy; a single channel uses binary CE with a sigmoid. There is no on-the-fly fallback:
    a missing or mis-shaped map raises ``ValueError``.

    ``reduction="mean"`` averages over the voxels that take part; ``"none"`` returns ``(B, *spatial)``.
    Empty classes: an absent class's map is never read (no voxel has it as its true class).

    Reference: Calivá, Iriondo, Martinez, Majumdar, Pedoia, "Distance Map Loss Penalty Term for Semantic
    Segmentation", MIDL 2019 (extended abstract, arXiv:1908.03679). No parameters beyond MONAI's common ones.
    """

    aux_keys = ("dist",)
    map_mode = "penalty"

    def __init__(self, to_onehot_y: bool = False, reduction: str = "mean", ignore_index: int | None = None) -> None:
        super().__init__(True, to_onehot_y, False, True, None, reduction, ignore_index)

    @staticmethod
    def true_class_penalty(dist: torch.Tensor | None, prep: Prepared) -> torch.Tensor:
        """Validate the ``dist`` map and return Φ of each voxel's true class, ``(B, *spatial)``."""
        logits = prep.logits
        expected = f"(B, C, *spatial) or (B, 1, *spatial) for input shape {tuple(logits.shape)}"
        if dist is None:
            raise ValueError(
                "DistancePenalizedCELoss needs the aux tensor 'dist' (the distance transform in mode 'penalty'): "
                f"call loss(input, target, dist=penalty_map) with a map of shape {expected}"
            )
        if not isinstance(dist, torch.Tensor):
            raise TypeError(f"dist must be a torch tensor, got {type(dist).__name__}")
        dist, _ = checked_map(dist, "DistancePenalizedCELoss", "dist", "penalty")
        if (
            dist.ndim != logits.ndim
            or dist.shape[0] != logits.shape[0]
            or dist.shape[2:] != logits.shape[2:]
            or dist.shape[1] not in (1, logits.shape[1])
        ):
            raise ValueError(f"dist map shape {tuple(dist.shape)} does not match: expected {expected}")
        dist = dist.to(logits.dtype)
        lowest, highest = (float(v) for v in torch.aminmax(dist))
        if not (math.isfinite(lowest) and math.isfinite(highest)):
            raise ValueError("dist map contains NaN or inf values")
        if lowest < 0:
            raise ValueError(f"dist map has negative values (min {lowest:g}); the penalty map Φ lies in [0, 1]")
        if dist.shape[1] == 1:
            return dist[:, 0]
        return dist.gather(1, prep.labels.unsqueeze(1))[:, 0]

    def forward(self, input: torch.Tensor, target: torch.Tensor, dist: torch.Tensor | None = None) -> torch.Tensor:
        prep = prepare_exclusive(self, input, target)
        voxel_loss = (1 + self.true_class_penalty(dist, prep)) * voxel_nll(prep)
        return reduce_over_voxels(voxel_loss, prep, self.reduction)


@register(
    "conservative",
    "extra",
    "Zhu, Zhou, Yang, Shi, Lin, Penalizing Top Performers: Conservative Loss for Semantic Segmentation "
    "Adaptation, ECCV 2018",
)
class ConservativeLoss(SegmentationLoss):
    r"""Conservative loss :math:`\lambda (1 + \log_a p_t)^2 \log_a(-\log_a p_t)` per voxel, clamped as p_t → 1.

    With :math:`t = -\log_a p_t` (the true class's CE in base a) the loss is
    :math:`\lambda (1 - t)^2 \log_a t`, evaluated at :math:`\max(t, \varepsilon)`; softmax over the classes
    (a single channel uses a sigmoid). Defaults a = e and λ = 5 from Zhu et al.

    Sign, checked: as printed the loss is positive for :math:`p_t < 1/a`, 0 at :math:`p_t = 1/a` and negative
    above, and it decreases monotonically in :math:`p_t` (its slope vanishes only at :math:`1/a`), so
    minimising it raises :math:`p_t` everywhere; negating it would train towards wrong labels, so the printed
    sign is kept and the loss is negative by definition for confident voxels. Its magnitude is large at both
    extremes ("penalises the extreme good and bad cases"); on the true-class logit the pull vanishes at
    :math:`p_t = 1/a` and, unlike CE's :math:`1 - p_t`, tends to the constant :math:`\lambda / \ln a` as
    :math:`p_t \to 1`, where the loss tends to −∞. Clamp (medseg's choice, the paper has none):
    ``eps`` = 1e-3 as the floor of :math:`t`, i.e. :math:`p_t \le a^{-\varepsilon} \approx 0.999`, so the loss is
    bounded below by :math:`\lambda (1 - \varepsilon)^2 \log_a \varepsilon \approx -34.47`, finite in float32
    and bfloat16, and a voxel past the clamp gets no gradient.

    ``reduction="mean"`` averages over the voxels that take part; ``"none"`` returns ``(B, *spatial)``
    (0 at ignored voxels). Class-free per voxel: an absent class changes nothing.

    Reference: Zhu, Zhou, Yang, Shi, Lin, "Penalizing Top Performers: Conservative Loss for Semantic
    Segmentation Adaptation", ECCV 2018.
    """

    def __init__(
        self,
        to_onehot_y: bool = False,
        scale: float = 5.0,
        base: float = math.e,
        eps: float = 1e-3,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(True, to_onehot_y, False, True, None, reduction, ignore_index)
        if scale <= 0:
            raise ValueError(f"scale (λ) must be positive, got {scale}")
        if base <= 1:
            raise ValueError(f"base (a) of the logarithm must be > 1, got {base}")
        if not 0 < eps < 1:
            raise ValueError(f"eps (the clamp on -log_a p_t) must be in (0, 1), got {eps}")
        self.scale = float(scale)
        self.base = float(base)
        self.eps = float(eps)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = prepare_exclusive(self, input, target)
        log_base = math.log(self.base)
        t = (voxel_nll(prep) / log_base).clamp_min(self.eps)  # -log_a p_t
        voxel_loss = self.scale * (1 - t) ** 2 * torch.log(t) / log_base
        if prep.mask is not None:
            voxel_loss = voxel_loss * prep.mask[:, 0]
        return reduce_over_voxels(voxel_loss, prep, self.reduction)
