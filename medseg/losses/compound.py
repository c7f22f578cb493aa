"""Compound losses: a region term and a pixel term in one loss, and :class:`CompoundLoss`, any weighted sum.

Where a term is exactly one of medseg's own losses (the Dice of ``dice_ce``, ``dice_focal`` and ``combo``, the
cross-entropy of ``dice_ce``, the focal loss of ``dice_focal``), the compound holds an instance of it, as
nnU-Net's ``DC_and_CE_loss`` does. Where the paper transforms a term (the logarithms and exponents of
``exp_log``, the asymmetric terms of ``unified_focal``), the compound computes it from one prepared input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._fused_compound import owns_its_softmax, softmax_overlap_label_log_prob
from ._prepare import (
    Prepared,
    SegmentationLoss,
    class_weight_tensor,
    describe_loss,
    overlap_stats,
    reduce,
    shared_preparation,
    softmax_label_sums,
)
from .pixel import CrossEntropyLoss, FocalLoss
from .region import DiceLoss
from .registry import get_loss, register

__all__ = ["ComboLoss", "CompoundLoss", "DiceCELoss", "DiceFocalLoss", "ExpLogLoss", "UnifiedFocalLoss"]

#: smallest base a fractional power (or log) is evaluated at: ``x**γ`` with ``γ < 1`` has an infinite slope at 0.
_POW_FLOOR = 1e-12


def _check_trade_off(**weights: float) -> None:
    for name, value in weights.items():
        if not (value >= 0.0 and value < float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _check_unit_interval(**values: float) -> None:
    for name, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")


@register("dice_ce", "compound", "MONAI DiceCELoss; Dice + cross-entropy as in Isensee et al., nnU-Net, 2021")
class DiceCELoss(nn.Module):
    r"""Weighted sum of the soft Dice loss and the cross-entropy: :math:`\lambda_d L_{Dice} + \lambda_{ce} L_{CE}`.

    Same arguments, defaults (``lambda_dice = lambda_ce = 1``) and numbers as MONAI's ``DiceCELoss``:
    the activation flags, ``include_background``, ``squared_pred``, ``jaccard``, ``smooth_*`` and ``batch``
    act on the Dice term only; the cross-entropy always takes the logits, over all classes (softmax CE for
    ``C > 1`` channels, binary CE for one channel). ``weight`` (one per class) weighs both terms, the Dice term
    without class 0's entry when ``include_background=False``; for one channel a single ``weight`` is the
    BCE's ``pos_weight`` and the Dice term is unweighted. ``label_smoothing`` acts on the multi-class CE only.
    One channel is binary in both terms: pass ``sigmoid=True`` (``softmax=True`` gives the Dice term the same
    sigmoid, with MONAI's warning); without an activation the Dice term needs probabilities and refuses logits.

    Added: ``ignore_index`` (MONAI's ``DiceCELoss`` has none and fails on a label 255); the voxels with that
    label take part in neither term. Label-map targets need no ``to_onehot_y``. Soft targets in [0, 1] are
    accepted by both terms (MONAI's numbers without ``weight``).

    Differs from MONAI in one corner: with a per-class ``weight`` *and* a one-hot target, torch (hence
    MONAI) divides the weighted CE sum by the voxel count, whereas medseg's CE divides by the summed weight
    of each voxel's class for both target forms (torch's rule for label maps).

    ``reduction`` is ``"mean"`` or ``"sum"`` (the Dice term is per class, the CE term per voxel: no common
    unreduced shape). A class absent from target and prediction adds 0 to the Dice term (see
    :class:`~medseg.losses.DiceLoss`).

    Reference: MONAI ``DiceCELoss``; the Dice + CE sum is nnU-Net's default (Isensee et al., Nature Methods 2021).
    """

    accepts_soft_target = True  # both terms take soft targets

    aux_keys: tuple[str, ...] = ()

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(
                f"DiceCELoss supports reduction 'mean' or 'sum', got {reduction!r}: the Dice term is per class "
                "and the cross-entropy per voxel, so there is no common unreduced shape"
            )
        _check_trade_off(lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        class_weight = class_weight_tensor(weight)
        dice_weight = class_weight
        if class_weight is not None and class_weight.numel() == 1:
            dice_weight = None  # a single weight is the one-channel BCE's pos_weight; MONAI's Dice ignores it
        elif class_weight is not None and not include_background:
            dice_weight = class_weight[1:]
        self.dice = DiceLoss(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            squared_pred,
            jaccard,
            reduction,
            smooth_nr,
            smooth_dr,
            batch,
            dice_weight,
            ignore_index=ignore_index,
        )
        self.dice.loss_name = f"the Dice term of {describe_loss(self)}"
        self.cross_entropy = CrossEntropyLoss(
            reduction=reduction, weight=class_weight, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        # one channel: per-voxel binary CE, weighted and reduced here (MONAI uses ``weight`` as BCE's pos_weight)
        self.binary_cross_entropy = CrossEntropyLoss(sigmoid=True, reduction="none", ignore_index=ignore_index)
        self.register_buffer("pos_weight", class_weight, persistent=False)
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def binary_ce(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        r"""Binary CE of a one-channel input, positives weighted by ``weight`` (torch's ``pos_weight``):
        :math:`-[w\, g \log \sigma(x) + (1 - g) \log \sigma(-x)]`, for 0/1 or soft targets."""
        prep = self.binary_cross_entropy.prepare(input, target)
        g = prep.target  # 0 at ignored voxels, as are the terms below
        positive = -g * prep.log_probs
        if self.pos_weight is not None:
            if self.pos_weight.numel() != 1:
                raise ValueError(
                    f"weight has {self.pos_weight.numel()} entries; a one-channel input takes a single weight "
                    "(the positive-class weight)"
                )
            positive = positive * self.pos_weight.to(positive).reshape(())
        terms = prep.masked(positive - (1 - g) * prep.log_one_minus_probs)
        if self.reduction == "sum":
            return terms.sum()
        return terms.sum() / prep.voxel_count().sum().clamp_min(1)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with shared_preparation():  # one label check, softmax and one-hot for both terms
            return self._terms(input, target)

    def _terms(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.shape[1] == 1:
            ce = self.binary_ce(input, target)
            return self.lambda_dice * self.dice(input, target) + self.lambda_ce * ce
        if self.pos_weight is not None and self.pos_weight.numel() == 1:
            raise ValueError(
                f"a single weight is the positive-class weight of a one-channel input; the input has "
                f"{input.shape[1]} channels, so give one weight per class"
            )
        ce = self.cross_entropy(input, target)  # first: the Dice term's probabilities are the exp of its log-softmax
        return self.lambda_dice * self.dice(input, target) + self.lambda_ce * ce


@register("dice_focal", "compound", "MONAI DiceFocalLoss; Zhu et al., AnatomyNet, Medical Physics 2019")
class DiceFocalLoss(nn.Module):
    r"""Weighted sum of the soft Dice loss and the focal loss: :math:`\lambda_d L_{Dice} + \lambda_f L_{Focal}`.

    Same arguments, defaults (``lambda_dice = lambda_focal = 1``, :math:`\gamma = 2`) and numbers as MONAI's
    ``DiceFocalLoss``: its terms are :class:`~medseg.losses.DiceLoss` and :class:`~medseg.losses.FocalLoss`. As
    there, the activation flags and the Dice options act on the Dice term only, and the focal term takes the
    logits with a *sigmoid* per channel (``FocalLoss``'s default), whatever the Dice activation;
    ``include_background``, ``weight``, ``alpha`` and ``reduction`` act on both terms.

    Added: ``focal_softmax=True`` gives the focal term ``FocalLoss(use_softmax=True)`` (MONAI's ``DiceFocalLoss``
    cannot select it); ``ignore_index`` (voxels with that label take part in neither term); label-map targets need
    no ``to_onehot_y``; soft targets in [0, 1].

    ``reduction="none"`` returns the Dice term ``(B, C, 1, ...)`` broadcast onto the per-class focal terms
    ``(B, C, *spatial)``, as MONAI does; ``"sum"`` is the Dice sum plus MONAI's focal ``"sum"`` (spatial means
    summed). A class absent from target and prediction adds 0 to the Dice term; its focal term is the (small) loss
    of predicting it absent.

    References: Lin et al., Focal loss, ICCV 2017; Dice + focal: Zhu et al., AnatomyNet, Medical Physics 2019.
    """

    accepts_soft_target = True  # both terms take soft targets

    aux_keys: tuple[str, ...] = ()

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        gamma: float = 2.0,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        alpha: float | None = None,
        focal_softmax: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        _check_trade_off(lambda_dice=lambda_dice, lambda_focal=lambda_focal)
        self.dice = DiceLoss(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            squared_pred,
            jaccard,
            reduction,
            smooth_nr,
            smooth_dr,
            batch,
            weight,
            ignore_index=ignore_index,
        )
        self.dice.loss_name = f"the Dice term of {describe_loss(self)}"
        self.focal = FocalLoss(
            include_background=include_background,
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            reduction=reduction,
            use_softmax=focal_softmax,
            ignore_index=ignore_index,
        )
        self.focal.loss_name = f"the focal term of {describe_loss(self)}"
        self.lambda_dice = float(lambda_dice)
        self.lambda_focal = float(lambda_focal)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with shared_preparation():  # one label check, activation and one-hot for both terms (log-softmax first)
            focal = self.focal(input, target)
            return self.lambda_dice * self.dice(input, target) + self.lambda_focal * focal


@register("combo", "compound", "Taghanaki et al., Combo loss, Computerized Medical Imaging and Graphics 2019")
class ComboLoss(SegmentationLoss):
    r"""Combo loss: :math:`\alpha\, L_{wCE} + (1 - \alpha)(1 - \mathrm{Dice})`, both per class, then reduced.

    :math:`L_{wCE} = -\frac{1}{N}\sum_i \beta\, g_i \log p_i + (1 - \beta)(1 - g_i)\log(1 - p_i)` is the
    binary cross-entropy of each class against the rest, with :math:`\beta` weighing the positives
    (:math:`\beta < 0.5` penalises false positives more, :math:`\beta > 0.5` false negatives), averaged over
    the voxels that take part (per item, or over the batch with ``batch=True``). The Dice term is
    :class:`~medseg.losses.DiceLoss` (same smoothing). One sigmoid channel is the paper's binary loss; with
    softmax each class is one-vs-rest.

    Defaults :math:`\alpha = 0.5`, :math:`\beta = 0.5` (the paper tunes both; 0.5 weighs the terms and the
    error types equally). The paper subtracts the Dice coefficient (values down to :math:`-(1-\alpha)`); ours
    uses :math:`1 - \mathrm{Dice}`, so the loss is :math:`\ge 0` with 0 at a perfect prediction.

    ``reduction="none"`` returns ``(B, C, 1, ...)`` (``(1, C, 1, ...)`` with ``batch=True``).
    A class absent from target and prediction adds 0 to the Dice term and only the negatives' CE. Soft targets in
    [0, 1] are accepted (both terms are defined for them).

    Reference: Taghanaki, Zheng, Zhou, Georgescu, Sharma, Xu, Comaniciu, Hamarneh, "Combo loss: Handling
    input and output imbalance in multi-organ segmentation", Computerized Medical Imaging and Graphics 2019.
    """

    accepts_soft_target = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        alpha: float = 0.5,
        beta: float = 0.5,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, ignore_index)
        _check_unit_interval(alpha=alpha, beta=beta)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.batch = batch
        self.dice = DiceLoss(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            ignore_index=ignore_index,
        )
        self.dice.loss_name = f"the Dice term of {self.loss_name}"
        self.dice.warns_on_single_channel_softmax = False  # the combo's own prepare has warned already

    def label_map_ce_sums(self, prep: Prepared) -> torch.Tensor:
        r"""The β-weighted CE summed per item and class ``(B, C')`` for a softmax and hard labels, no one-hot:
        :math:`-\beta \sum_{i: l_i = c} \log p_{ic} - (1-\beta) \sum_{i: l_i \ne c} \log(1 - p_{ic})` from
        :func:`~medseg.losses._prepare.softmax_label_sums` (one chunked pass, each voxel's own label left out of the
        negatives: no cancellation), which also leaves the Dice term its TP, Σp and Σg."""
        sums = softmax_label_sums(prep)
        terms = -(self.beta * sums[3] + (1.0 - self.beta) * sums[4])
        return terms[:, prep.classes[0] :]

    def weighted_ce(self, prep: Prepared) -> torch.Tensor:
        """β-weighted binary CE per item and class ``(B, C')`` (``(C',)`` with ``batch=True``)."""
        if prep.activation == "softmax" and prep.labels is not None:
            terms = self.label_map_ce_sums(prep)
            counted = prep.voxel_count()
            if self.batch:
                return terms.sum(0) / counted.sum().clamp_min(1)
            return terms / counted.clamp_min(1).unsqueeze(1)
        g = prep.target
        log_p = prep.log_probs  # before the probabilities: in a shared block they are its exp (one softmax)
        if prep.activation == "sigmoid":
            log_not_p = nn.functional.logsigmoid(-prep.logits)
        else:  # 1 - p can round to 0 for a confident class: keep the log finite
            p = prep.probs
            log_not_p = torch.log1p(-p.clamp(max=1.0 - torch.finfo(p.dtype).eps))
        terms = prep.masked(-(self.beta * g * log_p + (1.0 - self.beta) * (1.0 - g) * log_not_p))
        counted = prep.voxel_count()
        if self.batch:
            return terms.sum([0, *prep.spatial_dims]) / counted.sum().clamp_min(1)
        return terms.sum(prep.spatial_dims) / counted.clamp_min(1).unsqueeze(1)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with shared_preparation():  # the Dice term reuses the CE term's preparation
            ce = self.weighted_ce(self.prepare(input, target))
            loss = self.alpha * ce + (1.0 - self.alpha) * self.dice.per_class(input, target)
        if self.batch and self.reduction == "none":
            loss = loss.unsqueeze(0)
        return reduce(loss, self.reduction, input.ndim - 2)


@register("exp_log", "compound", "Wong et al., Exponential logarithmic loss, MICCAI 2018")
class ExpLogLoss(SegmentationLoss):
    r"""Exponential logarithmic loss: a weighted sum of the Dice and the cross-entropy, each log-transformed.

    :math:`L = w_D\,\mathbb{E}_c[(-\ln D_c)^{\gamma_D}] + w_{CE}\,\mathbb{E}_x[w_l(-\ln p_l)^{\gamma_{CE}}]`, with
    :math:`D_c = \frac{2TP_c + s_{nr}}{2TP_c + FP_c + FN_c + s_{dr}}` per item and class, :math:`l` the label
    of voxel :math:`x`, :math:`w_l = (\sum_k f_k / f_l)^{0.5}` with :math:`f_k` the frequency of label
    :math:`k`. The Dice mean runs over the kept classes, the CE expectation over the voxels that take part
    (per item); then ``reduction`` over the batch (``"none"``: ``(B,)``).

    Defaults from the paper: :math:`w_D = 0.8`, :math:`w_{CE} = 0.2`, :math:`\gamma_D = \gamma_{CE} = 0.3`,
    smoothing :math:`s_{nr} = s_{dr} = 1` (its pseudocount for labels missing from a sample).
    ``class_frequency`` (all C classes, any scale: e.g. voxel counts over the training set) sets
    :math:`f_k`; without it the frequencies are counted in the batch (ignored voxels excluded), and a class
    absent from the batch weighs 0 (it has no voxels).

    Probabilities must be a distribution over mutually exclusive classes (``softmax=True``, a suitable
    ``other_act``, or probabilities as input), with at least two channels (binary: add a background channel).
    ``include_background=False`` drops class 0 from both terms (its voxels still count in :math:`\sum f_k`
    and in the expectation). A class absent from target and prediction has :math:`D_c = 1` and adds 0; the
    logarithm and the power are evaluated at no less than 1e-12, so the gradient stays finite.

    Reference: Wong, Moradi, Tang, Syeda-Mahmood, "3D segmentation with exponential logarithmic loss for
    highly unbalanced object sizes", MICCAI 2018.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        weight_dice: float = 0.8,
        weight_ce: float = 0.2,
        gamma_dice: float = 0.3,
        gamma_ce: float = 0.3,
        smooth_nr: float = 1.0,
        smooth_dr: float = 1.0,
        class_frequency: Sequence[float] | torch.Tensor | None = None,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, False, softmax, other_act, reduction, ignore_index)
        _check_trade_off(weight_dice=weight_dice, weight_ce=weight_ce)
        if gamma_dice <= 0 or gamma_ce <= 0:
            raise ValueError(f"gamma_dice and gamma_ce must be > 0, got {gamma_dice} and {gamma_ce}")
        frequency = class_weight_tensor(class_frequency, "class_frequency")
        if frequency is not None and (frequency.ndim != 1 or not (frequency > 0).all()):
            raise ValueError(f"class_frequency must list one positive value per class, got {frequency.tolist()}")
        self.register_buffer("class_frequency", frequency, persistent=False)
        self.weight_dice = float(weight_dice)
        self.weight_ce = float(weight_ce)
        self.gamma_dice = float(gamma_dice)
        self.gamma_ce = float(gamma_ce)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    def label_weights(self, prep: Prepared, num_classes: int) -> torch.Tensor:
        """:math:`w_c = (\\sum_k f_k / f_c)^{0.5}` of the kept classes ``(C',)``; 0 for a class with no voxels."""
        if self.class_frequency is not None:
            if self.class_frequency.numel() != num_classes:
                raise ValueError(
                    f"class_frequency has {self.class_frequency.numel()} entries but the input has {num_classes} "
                    "classes (list all classes, background included)"
                )
            frequency = self.class_frequency.to(prep.logits)
            return (frequency.sum() / frequency)[prep.classes].sqrt()
        counts = prep.target.sum([0, *prep.spatial_dims])  # each voxel that takes part has exactly one label
        total = prep.voxel_count().sum().to(counts)
        return torch.where(counts > 0, total / counts.clamp_min(1), 0.0).sqrt()

    def label_map_loss(self, prep: Prepared, num_classes: int) -> torch.Tensor:
        """The loss per item ``(B,)`` for a softmax and hard labels, without a one-hot target: the Dice term from
        :func:`~medseg.losses._prepare.overlap_stats`'s label-map path, the CE term from the log-probability of
        each voxel's label (one gather) weighted by its class's :math:`w_l` (0 for a class left out). Both from one
        chunked pass (:func:`~medseg.losses._fused_compound.softmax_overlap_label_log_prob`) unless another term of
        a shared block has taken the softmax already."""
        if owns_its_softmax(prep):
            tp, sum_p, sum_g, log_p = softmax_overlap_label_log_prob(prep)
            label_counts = sum_g.sum(0).to(tp.dtype)
            first = prep.classes[0]
            tp, sum_p, sum_g = tp[:, first:], sum_p[:, first:], sum_g[:, first:].to(tp.dtype)
            fp, fn = sum_p - tp, sum_g - tp
        else:
            tp, fp, fn = overlap_stats(prep)
            log_p, label_counts = prep.label_log_prob(), None
        dice = (2.0 * tp + self.smooth_nr) / (2.0 * tp + fp + fn + self.smooth_dr)
        dice_term = (-torch.log(dice.clamp_min(_POW_FLOOR))).clamp_min(_POW_FLOOR).pow(self.gamma_dice).mean(1)

        if self.class_frequency is not None:
            weights = self.label_weights(prep, num_classes)
        else:
            counts = (prep.label_counts() if label_counts is None else label_counts)[prep.classes]
            total = prep.voxel_count().sum().to(counts)
            weights = torch.where(counts > 0, total / counts.clamp_min(1), 0.0).sqrt()
        table = torch.zeros(num_classes, dtype=weights.dtype, device=weights.device)
        table[prep.classes] = weights  # a class left out by include_background=False weighs 0
        neg_log_p = (-log_p).clamp_min(_POW_FLOOR).pow(self.gamma_ce)
        voxel_terms = prep.masked(table[prep.labels].unsqueeze(1) * neg_log_p)
        ce_term = voxel_terms.flatten(1).sum(1) / prep.voxel_count().clamp_min(1)
        return self.weight_dice * dice_term + self.weight_ce * ce_term

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.Tensor) and input.ndim > 1 and input.shape[1] < 2:
            raise ValueError(
                f"{self.loss_name} needs at least two channels (mutually exclusive classes), got input shape "
                f"{tuple(input.shape)}. For a binary problem give two channels (background, foreground): "
                "torch.cat([torch.zeros_like(x), x], 1) with softmax=True for a foreground logit x (the softmax of "
                "(0, x) is the sigmoid), or torch.cat([1 - p, p], 1) for a foreground probability p"
            )
        with shared_preparation(log_softmax_first=True):  # one softmax for both terms
            prep = self.prepare(input, target)
            if prep.activation == "softmax" and prep.labels is not None:
                return reduce(self.label_map_loss(prep, input.shape[1]), self.reduction)
        p = prep.masked(prep.probs)
        g = prep.target
        dims = prep.spatial_dims
        tp = (p * g).sum(dims)
        dice = (2.0 * tp + self.smooth_nr) / (p.sum(dims) + g.sum(dims) + self.smooth_dr)
        log_dice = -torch.log(dice.clamp_min(_POW_FLOOR))
        dice_term = log_dice.clamp_min(_POW_FLOOR).pow(self.gamma_dice).mean(1)

        w = self.label_weights(prep, input.shape[1]).view(1, -1, *([1] * len(dims)))
        neg_log_p = (-prep.log_probs).clamp_min(_POW_FLOOR).pow(self.gamma_ce)
        voxel_terms = prep.masked(g * w * neg_log_p).sum(1)
        ce_term = voxel_terms.flatten(1).sum(1) / prep.voxel_count().clamp_min(1)
        return reduce(self.weight_dice * dice_term + self.weight_ce * ce_term, self.reduction)


@register("unified_focal", "compound", "Yeung et al., Unified Focal loss, Comput. Med. Imaging Graph. 2022")
class UnifiedFocalLoss(SegmentationLoss):
    r"""Asymmetric Unified Focal loss: :math:`\lambda\, L_{aFT} + (1 - \lambda)\, L_{aF}`.

    With class 0 the background and the other classes "rare", :math:`\delta` weighing false negatives in the
    Tversky index :math:`TI_c = \frac{TP_c + s_{nr}}{TP_c + \delta FN_c + (1-\delta) FP_c + s_{dr}}` (medseg's
    Tversky convention: :math:`\alpha = 1-\delta` on FP, :math:`\beta = \delta` on FN):

    - asymmetric Focal Tversky, mean over classes: :math:`1 - TI_0` for the background,
      :math:`(1 - TI_c)^{1-\gamma}` for each rare class (enhanced);
    - asymmetric Focal, mean over voxels of the sum over classes:
      :math:`-(1-\delta)(1-p_0)^\gamma g_0 \log p_0` for the background (suppressed),
      :math:`-\delta\, g_c \log p_c` for each rare class.

    Binary and multi-class: with ``softmax`` (or other exclusive probabilities, two or more channels) the
    classes are as above. With ``sigmoid``, or a single channel of probabilities, each channel is its own
    binary problem with classes (background :math:`1-p`, foreground :math:`p`), averaged over the channels.
    ``include_background=False`` drops class 0's terms (softmax case). Both terms are per item; ``reduction``
    then acts on the batch (``"none"``: ``(B,)``). Soft targets in [0, 1] are accepted (both terms are defined
    for them).

    Defaults from the paper: :math:`\lambda = 0.5`, :math:`\delta = 0.6`, :math:`\gamma = 0.5`;
    ``tversky_weight`` is :math:`\lambda`, on the Focal Tversky term as in the authors' code.
    A class absent from target and prediction has :math:`TI_c = 1` and adds 0; the fractional powers are
    evaluated at no less than 1e-12, so gradients stay finite at a perfect prediction.

    Versus MONAI's ``AsymmetricUnifiedFocalLoss`` (binary only; its input must already be probabilities, it
    applies no activation): MONAI puts its ``weight`` on the focal term (ours: :math:`1-\lambda`), defaults
    :math:`\delta` to 0.7, averages its focal term over the two classes (half ours, which follows the paper's
    sum over classes), clamps probabilities to :math:`[10^{-7}, 1-10^{-7}]` and smooths with 1e-7. With the
    same :math:`\delta,\gamma`, smoothing 1e-7 and probabilities inside that range, its Focal Tversky term
    equals ours and its focal term is half ours.

    Reference: Yeung, Sala, Schönlieb, Rundo, "Unified Focal loss: Generalising Dice and cross entropy-based
    losses to handle class imbalanced medical image segmentation", Computerized Medical Imaging and
    Graphics 2022.
    """

    accepts_soft_target = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        tversky_weight: float = 0.5,
        delta: float = 0.6,
        gamma: float = 0.5,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, ignore_index)
        _check_unit_interval(tversky_weight=tversky_weight, delta=delta, gamma=gamma)
        self.tversky_weight = float(tversky_weight)
        self.delta = float(delta)
        self.gamma = float(gamma)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    @staticmethod
    def class_view(prep: Prepared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Probabilities, their logs, target ``(B, K, ...)``, a background flag per class ``(K,)``, and the
        number of independent problems the classes form (1, or the channel count for per-channel binary)."""
        p, g = prep.probs, prep.target
        if prep.activation != "sigmoid" and p.shape[1] > 1:
            background = torch.tensor([c == 0 for c in prep.classes], device=p.device)
            return p, prep.log_probs, g, background, 1
        if prep.activation == "sigmoid":
            log_p, log_not_p = prep.log_probs, nn.functional.logsigmoid(-prep.logits)
        else:
            log_p, log_not_p = prep.log_probs, torch.log((1.0 - p).clamp_min(_POW_FLOOR))
        channels = p.shape[1]
        # (background, foreground) pairs per channel, interleaved along dim 1
        probs = torch.stack([1.0 - p, p], 2).flatten(1, 2)
        logs = torch.stack([log_not_p, log_p], 2).flatten(1, 2)
        target = prep.masked(torch.stack([1.0 - g, g], 2).flatten(1, 2))
        background = torch.tensor([True, False] * channels, device=p.device)
        return probs, logs, target, background, channels

    def label_map_loss(self, prep: Prepared) -> torch.Tensor:
        """The loss per item ``(B,)`` for a softmax and hard labels, without a one-hot target: the Tversky indices
        from the label map; the focal term, whose only non-zero class per voxel is its label, from that label's
        log-probability. Both from one chunked pass
        (:func:`~medseg.losses._fused_compound.softmax_overlap_label_log_prob`) unless another term of a shared
        block has taken the softmax already (then :func:`~medseg.losses._prepare.overlap_stats` and a gather)."""
        if owns_its_softmax(prep):
            tp, sum_p, sum_g, log_p = softmax_overlap_label_log_prob(prep)
            first = prep.classes[0]
            tp, sum_p, sum_g = tp[:, first:], sum_p[:, first:], sum_g[:, first:].to(tp.dtype)
            fp, fn = sum_p - tp, sum_g - tp
        else:
            tp, fp, fn = overlap_stats(prep)
            log_p = prep.label_log_prob()  # (B, 1, *spatial)
        tversky = (tp + self.smooth_nr) / (tp + self.delta * fn + (1.0 - self.delta) * fp + self.smooth_dr)
        miss = 1.0 - tversky
        enhanced = miss.clamp_min(_POW_FLOOR).pow(1.0 - self.gamma)
        background = torch.tensor([c == 0 for c in prep.classes], device=miss.device)
        focal_tversky = torch.where(background.view(1, -1), miss, enhanced).mean(1)

        is_background = prep.labels.unsqueeze(1) == 0
        if prep.classes[0] == 0:
            suppressed = (1.0 - self.delta) * (1.0 - log_p.exp()).clamp_min(_POW_FLOOR).pow(self.gamma)
            weight = torch.where(is_background, suppressed, self.delta)
        else:  # class 0 left out: its voxels add nothing
            weight = self.delta * (~is_background).to(log_p.dtype)
        voxel_focal = prep.masked(-weight * log_p)
        focal = voxel_focal.flatten(1).sum(1) / prep.voxel_count().clamp_min(1)
        return self.tversky_weight * focal_tversky + (1.0 - self.tversky_weight) * focal

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with shared_preparation(log_softmax_first=True):  # one softmax for both terms
            prep = self.prepare(input, target)
            if prep.activation == "softmax" and prep.labels is not None:
                return reduce(self.label_map_loss(prep), self.reduction)
        p, log_p, g, background, problems = self.class_view(prep)
        shape = (1, -1, *([1] * (p.ndim - 2)))
        is_bg = background.view(shape)
        dims = list(range(2, p.ndim))

        p_in = prep.masked(p)
        tp = (p_in * g).sum(dims)
        fn = g.sum(dims) - tp
        fp = p_in.sum(dims) - tp
        tversky = (tp + self.smooth_nr) / (tp + self.delta * fn + (1.0 - self.delta) * fp + self.smooth_dr)
        miss = 1.0 - tversky
        enhanced = miss.clamp_min(_POW_FLOOR).pow(1.0 - self.gamma)
        focal_tversky = torch.where(background.view(1, -1), miss, enhanced).mean(1)

        ce = -g * log_p
        suppressed = (1.0 - self.delta) * (1.0 - p).clamp_min(_POW_FLOOR).pow(self.gamma) * ce
        voxel_focal = prep.masked(torch.where(is_bg, suppressed, self.delta * ce)).sum(1) / problems
        focal = voxel_focal.flatten(1).sum(1) / prep.voxel_count().clamp_min(1)

        loss = self.tversky_weight * focal_tversky + (1.0 - self.tversky_weight) * focal
        return reduce(loss, self.reduction)


class CompoundLoss(nn.Module):
    r"""Weighted sum of registered losses by name: :math:`\sum_k w_k L_k`, weights changeable during training.

    Example: ``CompoundLoss({"ce": 0.5, "dice": 0.5}, loss_kwargs={"dice": {"softmax": True}})``.
    Each term is built with :func:`~medseg.losses.get_loss` (``loss_kwargs[name]``), or given ready-made in
    ``losses[name]`` (any ``nn.Module`` returning a scalar, e.g. one that is not registered); the terms are
    held as sub-modules, so ``.to()``, ``.double()`` and learnable loss parameters reach them.

    - ``set_weight(name, w)`` changes a weight (e.g. a handler raising a boundary term's weight each epoch,
      as Kervadec et al. do); ``weights`` reads them. A term of weight 0 is still evaluated (and logged).
    - ``last_values`` holds each term's unweighted value of the last call, detached, for logging.
    - Auxiliary tensors (``forward(input, target, **aux)``) go only to the terms whose ``aux_keys`` list
      them; ``aux_keys`` of the compound is the union. An aux tensor no term reads is an error (a typo).

    Every term must reduce to a scalar (keep their ``reduction`` at ``"mean"`` or ``"sum"``).
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        loss_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        losses: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        loss_kwargs = dict(loss_kwargs or {})
        losses = dict(losses or {})
        if not weights:
            raise ValueError("CompoundLoss needs at least one term, e.g. {'ce': 0.5, 'dice': 0.5}")
        for source, names in (("loss_kwargs", loss_kwargs), ("losses", losses)):
            stray = sorted(set(names) - set(weights))
            if stray:
                raise ValueError(f"{source} names {stray} that have no weight (terms: {sorted(weights)})")
        both = sorted(set(loss_kwargs) & set(losses))
        if both:
            raise ValueError(f"terms {both} are given both as a built module and as kwargs; give one")
        self._weights: dict[str, float] = {}
        self.terms = nn.ModuleDict()
        for name, weight in weights.items():
            self._weights[name] = self._checked_weight(name, weight)
            if name in losses:
                if not isinstance(losses[name], nn.Module):
                    raise TypeError(f"losses[{name!r}] must be an nn.Module, got {type(losses[name]).__name__}")
                self.terms[name] = losses[name]
            else:
                try:
                    self.terms[name] = get_loss(name, **loss_kwargs.get(name, {}))
                except ValueError as error:
                    raise ValueError(f"CompoundLoss term {name!r}: {error}") from error
        self.term_aux_keys = {name: tuple(getattr(term, "aux_keys", ())) for name, term in self.terms.items()}
        self.aux_keys: tuple[str, ...] = tuple(sorted({key for keys in self.term_aux_keys.values() for key in keys}))
        self.last_values: dict[str, torch.Tensor] = {}

    @staticmethod
    def _checked_weight(name: str, weight: float) -> float:
        weight = float(weight)
        if not (weight >= 0.0 and weight < float("inf")):
            raise ValueError(f"weight of term {name!r} must be a finite number >= 0, got {weight}")
        return weight

    @property
    def weights(self) -> dict[str, float]:
        """The current weight of each term (a copy: change them with :meth:`set_weight`)."""
        return dict(self._weights)

    def set_weight(self, name: str, weight: float) -> None:
        """Set the weight of term ``name`` (a finite number >= 0); takes effect at the next call."""
        if name not in self._weights:
            raise ValueError(f"no term {name!r} in this CompoundLoss (terms: {sorted(self._weights)})")
        self._weights[name] = self._checked_weight(name, weight)

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{name}: {w:g}" for name, w in self._weights.items())

    def forward(self, input: torch.Tensor, target: torch.Tensor, **aux: torch.Tensor) -> torch.Tensor:
        unread = sorted(set(aux) - set(self.aux_keys))
        if unread:
            raise ValueError(f"aux tensors {unread} are read by no term (terms read: {list(self.aux_keys) or 'none'})")
        total: torch.Tensor | None = None
        values: dict[str, torch.Tensor] = {}
        with shared_preparation(log_softmax_first=True):  # the terms share checks, one softmax, one-hot targets
            for name, term in self.terms.items():
                value = term(input, target, **{key: aux[key] for key in self.term_aux_keys[name] if key in aux})
                if value.ndim != 0:
                    raise ValueError(
                        f"term {name!r} returned shape {tuple(value.shape)}; CompoundLoss needs scalar terms "
                        "(reduction 'mean' or 'sum')"
                    )
                values[name] = value.detach()
                weighted = self._weights[name] * value
                total = weighted if total is None else total + weighted
        self.last_values = values
        return total
