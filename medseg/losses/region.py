"""Region-level losses: overlap of soft predictions and targets per class (Dice, Jaccard, Tversky, ...).

Most losses gather TP/FP/FN in one pass (:func:`overlap_stats`), combine them per class, then reduce. Those whose
formula needs more than TP/FP/FN (sensitivity-specificity, generalised Wasserstein Dice, Robust T-Loss) make their
own single pass over the probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ._label_sums import label_squares_path, softmax_label_squares
from ._prepare import Prepared, SegmentationLoss, apply_class_weight, class_weight_tensor, overlap_stats, reduce
from .registry import register

__all__ = [
    "AsymmetricSimilarityLoss",
    "DiceLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "GeneralizedWassersteinDiceLoss",
    "JaccardLoss",
    "LogCoshDiceLoss",
    "PenaltyGeneralizedDiceLoss",
    "RobustTLoss",
    "SensitivitySpecificityLoss",
    "TverskyLoss",
]


class _PerClassRegionLoss(SegmentationLoss):
    """Shared arguments and reduction of the losses computed per item and class from one prepared batch.

    A subclass implements :meth:`class_loss`; ``forward`` weights the classes (``weight``) and reduces.
    ``reduction="none"`` returns ``(B, C', 1, ...)`` (``(1, C', 1, ...)`` with ``batch=True``), as MONAI's DiceLoss;
    a subclass with ``none_broadcasts = False`` returns ``(B, C')`` (``(C',)``), as MONAI's TverskyLoss.
    A subclass whose formula holds for soft targets says so with ``accepts_soft_target = True``.
    """

    #: ``reduction="none"`` keeps a 1 per spatial dim so that the result broadcasts against the input
    none_broadcasts: bool = True
    #: with ``batch=True``, ``reduction="none"`` keeps a leading batch dim of 1: ``(1, C', 1, ...)``; False gives
    #: MONAI's DiceLoss shape ``(C', 1, ...)`` (the same broadcast against the input)
    none_batch_dim: bool = True

    def __init__(
        self,
        include_background: bool,
        to_onehot_y: bool,
        sigmoid: bool,
        softmax: bool,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None,
        reduction: str,
        batch: bool,
        weight: Sequence[float] | float | torch.Tensor | None,
        ignore_index: int | None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, ignore_index)
        self.batch = batch
        self.register_buffer("class_weight", class_weight_tensor(weight), persistent=False)

    def class_loss(self, prep: Prepared) -> torch.Tensor:
        """The loss per item and class ``(B, C')`` (``(C',)`` with ``batch=True``)."""
        raise NotImplementedError

    def per_class(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted loss per item and class, ``(B, C')`` (``(C',)`` with ``batch=True``)."""
        return self.class_loss(self.prepare(input, target))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.per_class(input, target)
        if loss.shape[-1] > 1:  # as MONAI: a class weight means nothing with one class left
            loss = apply_class_weight(loss, self.class_weight, class_dim=loss.ndim - 1)
        if not self.none_broadcasts:
            return reduce(loss, self.reduction)
        if self.batch and self.reduction == "none":
            if not self.none_batch_dim:
                return loss.view(*loss.shape, *([1] * (input.ndim - 2)))
            loss = loss.unsqueeze(0)
        return reduce(loss, self.reduction, input.ndim - 2)


@register("dice", "region", "Milletari et al., V-Net, 3DV 2016")
class DiceLoss(_PerClassRegionLoss):
    r"""Soft Dice loss per class: :math:`1 - \frac{2TP + s_{nr}}{2TP + FP + FN + s_{dr}}`.

    Same arguments, defaults and numbers as MONAI's ``DiceLoss`` (``squared_pred`` gives the V-Net form with
    :math:`\sum p^2 + \sum g^2` in the denominator; ``jaccard`` gives MONAI's soft Jaccard
    :math:`1 - \frac{2TP + s_{nr}}{2(TP + FP + FN) + s_{dr}}`, i.e. :class:`JaccardLoss` with halved smoothing).
    Soft targets in [0, 1] are accepted; ``soft_label=True`` computes TP as
    :math:`(\sum|p| + \sum|g| - \sum|p - g|)/2`, which equals :math:`\sum p g` for 0/1 targets and keeps the loss
    0 at :math:`p = g` for soft ones (Wang & Blaschko 2023; MONAI's ``soft_label``).
    Adds: label-map targets without ``to_onehot_y``, input validation, float32 reductions under autocast.
    One channel is binary, in this and every region loss: ``softmax=True`` applies the sigmoid (the softmax of the
    logits ``(0, x)``; MONAI warns and skips the activation), and without an activation values outside [0, 1]
    raise ValueError instead of being read as probabilities.

    A class absent from target and prediction scores :math:`1 - s_{nr}/s_{dr} = 0` (default smoothing).
    ``reduction="none"`` returns ``(B, C, 1, ...)`` (``(C, 1, ...)`` with ``batch=True``), MONAI's shapes.

    Reference: Milletari, Navab, Ahmadi, "V-Net", 3DV 2016.
    """

    accepts_soft_target = True

    none_batch_dim = False  # MONAI's DiceLoss shape

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
        soft_label: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(
            include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, batch, weight, ignore_index
        )
        self.squared_pred = squared_pred
        self.jaccard = jaccard
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.soft_label = soft_label

    def class_loss(self, prep: Prepared) -> torch.Tensor:
        tp, fp, fn = overlap_stats(prep, self.batch, self.squared_pred, self.soft_label)
        if self.jaccard:  # MONAI's form: the Jaccard loss with both smoothing terms halved
            return 1.0 - (2.0 * tp + self.smooth_nr) / (2.0 * (tp + fp + fn) + self.smooth_dr)
        return 1.0 - (2.0 * tp + self.smooth_nr) / (2.0 * tp + fp + fn + self.smooth_dr)


def _reduce_per_item(loss: torch.Tensor, reduction: str, batch: bool, spatial_ndim: int) -> torch.Tensor:
    """Reduce a loss already summed over the classes: ``(B, 1)``, or ``(1,)`` with ``batch``.

    ``reduction="none"`` gives ``(B, 1, 1, ...)`` (``(1, 1, ...)`` with ``batch``), MONAI's GeneralizedDiceLoss shapes.
    """
    if batch and reduction == "none":
        return loss.view(1, *([1] * spatial_ndim))
    return reduce(loss, reduction, spatial_ndim)


W_TYPES = ("square", "simple", "uniform")


@register("generalized_dice", "region", "Sudre et al., Generalised Dice overlap, DLMIA 2017")
class GeneralizedDiceLoss(SegmentationLoss):
    r"""Generalised Dice loss: one Dice over all classes, each weighted by the inverse square of its volume.

    .. math::
        L = 1 - \frac{2 \sum_c w_c TP_c + s_{nr}}{\sum_c w_c (2TP_c + FP_c + FN_c) + s_{dr}},
        \qquad w_c = \frac{1}{(\sum_i g_{ic})^2}

    (``w_type="simple"``: :math:`1/\sum_i g_{ic}`; ``"uniform"``: 1), summed over the classes of each item (over
    the classes and the whole batch with ``batch=True``). Same arguments, defaults and numbers as MONAI's
    ``GeneralizedDiceLoss`` (soft targets and ``soft_label`` as :class:`DiceLoss`); adds ``ignore_index`` (ignored
    voxels count in no volume and no overlap), label-map targets without ``to_onehot_y``, input validation, float32
    reductions under autocast.

    Empty classes: a class absent from an item's target would get an infinite weight (references that add
    :math:`\epsilon = 10^{-10}` give it :math:`10^{20}` and let its false positives swamp the loss). MONAI's rule,
    kept here: it gets the largest finite weight of that item (of the batch with ``batch=True``), so predicting it
    costs as much as for the rarest present class. An item with no class present at all (only possible with
    ``include_background=False`` or everything ignored) has all weights 0 and scores
    :math:`1 - s_{nr}/s_{dr} = 0`. ``reduction="none"`` returns ``(B, 1, 1, ...)`` (``(1, 1, ...)`` with
    ``batch=True``), MONAI's shapes.

    Reference: Sudre, Li, Vercauteren, Ourselin, Cardoso, "Generalised Dice overlap as a deep learning loss function
    for highly unbalanced segmentations", DLMIA (MICCAI workshop) 2017.
    """

    accepts_soft_target = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        w_type: str = "square",
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        soft_label: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, ignore_index)
        if w_type not in W_TYPES:
            raise ValueError(f"unsupported w_type {w_type!r}; choose one of {W_TYPES}")
        self.w_type = w_type
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = batch
        self.soft_label = soft_label

    def volume_weights(self, volume: torch.Tensor) -> torch.Tensor:
        """Class weights from the target volumes ``(B, C')``/``(C',)``, absent classes given the largest finite one."""
        if self.w_type == "square":
            w = volume.square().reciprocal()
        elif self.w_type == "simple":
            w = volume.reciprocal()
        else:
            return torch.ones_like(volume)
        absent = torch.isinf(w)
        w = w.masked_fill(absent, 0.0)
        return torch.where(absent, w.amax(-1, keepdim=True), w)

    def per_item(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Generalised Dice loss per item ``(B, 1)`` (``(1,)`` with ``batch=True``)."""
        prep = self.prepare(input, target)
        tp, fp, fn = overlap_stats(prep, self.batch, soft_label=self.soft_label)
        w = self.volume_weights((tp + fn).detach())
        numerator = 2.0 * (w * tp).sum(-1, keepdim=True) + self.smooth_nr
        denominator = (w * (2.0 * tp + fp + fn)).sum(-1, keepdim=True) + self.smooth_dr
        return 1.0 - numerator / denominator

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _reduce_per_item(self.per_item(input, target), self.reduction, self.batch, input.ndim - 2)


@register("penalty_gdl", "region", "Yang, Kweon, Kim, penalty loss for coronary angiography, MIDL 2019")
class PenaltyGeneralizedDiceLoss(GeneralizedDiceLoss):
    r"""Penalty generalised Dice loss: the generalised Dice loss :math:`L_{GD}` rescaled by a penalty :math:`k`.

    .. math::
        L = \frac{L_{GD}}{1 + k (1 - L_{GD})}

    per item (per batch with ``batch=True``), then reduced; :math:`L_{GD}` is :class:`GeneralizedDiceLoss` with the
    same arguments. ``k=2.5`` is the paper's value. :math:`L` is 0 at :math:`L_{GD}=0`, 1 at :math:`L_{GD}=1` and
    monotone in between; its slope :math:`(1+k)/(1 + k(1 - L_{GD}))^2` is :math:`1+k` for a poor prediction and
    :math:`1/(1+k)` near a perfect one. (Some survey code instead adds :math:`k` FP and :math:`k` FN to the
    denominator, which is the different function :math:`(1+k)L_{GD} / (1 + k L_{GD})`; this class follows the
    catalog's form.)

    Empty classes: as :class:`GeneralizedDiceLoss` (largest finite weight; an item with no class present scores 0).
    Soft targets and ``soft_label`` as :class:`DiceLoss`.

    Reference: Yang, Kweon, Kim, "Major Vessel Segmentation on X-ray Coronary Angiography using Deep Networks with a
    Novel Penalty Loss Function", MIDL 2019 (extended abstract).
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        k: float = 2.5,
        w_type: str = "square",
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        soft_label: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            w_type,
            reduction,
            smooth_nr,
            smooth_dr,
            batch,
            soft_label,
            ignore_index,
        )
        if k < 0:
            raise ValueError(f"k must be non-negative, got {k}")
        self.k = float(k)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        generalized_dice = self.per_item(input, target)
        loss = generalized_dice / (1.0 + self.k * (1.0 - generalized_dice))
        return _reduce_per_item(loss, self.reduction, self.batch, input.ndim - 2)


@register("log_cosh_dice", "region", "Jadon, A survey of loss functions for semantic segmentation, CIBCB 2020")
class LogCoshDiceLoss(_PerClassRegionLoss):
    r"""Log-cosh Dice loss: :math:`\log\cosh` of each class's soft Dice loss, then the class mean.

    .. math::
        L = \frac{1}{C} \sum_c \log\cosh\Big(1 - \frac{2TP_c + s_{nr}}{2TP_c + FP_c + FN_c + s_{dr}}\Big)

    Jadon's original is binary; the multi-class form applies :math:`\log\cosh` per class before the mean (and
    ``weight``), like MONAI's per-class Dice. Defaults are MONAI's Dice defaults. The loss lies in
    :math:`[0, \log\cosh 1 \approx 0.434]`; its slope :math:`\tanh(L_{Dice})` vanishes near a perfect prediction.

    Empty classes: a class absent from target and prediction has Dice loss :math:`1 - s_{nr}/s_{dr} = 0` and
    contributes :math:`\log\cosh 0 = 0`; predicting it anyway costs up to :math:`\log\cosh 1`. Soft targets and
    ``soft_label`` as :class:`DiceLoss`.

    Reference: Jadon, "A survey of loss functions for semantic segmentation", IEEE CIBCB 2020.
    """

    accepts_soft_target = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        soft_label: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(
            include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, batch, weight, ignore_index
        )
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.soft_label = soft_label

    def class_loss(self, prep: Prepared) -> torch.Tensor:
        tp, fp, fn = overlap_stats(prep, self.batch, soft_label=self.soft_label)
        dice_loss = 1.0 - (2.0 * tp + self.smooth_nr) / (2.0 * tp + fp + fn + self.smooth_dr)
        return torch.log(torch.cosh(dice_loss))


GWDL_WEIGHTING_MODES = ("default", "GDL")


@register("gwdl", "region", "Fidon et al., Generalised Wasserstein Dice Score, BrainLes 2017")
class GeneralizedWassersteinDiceLoss(SegmentationLoss):
    r"""Generalised Wasserstein Dice loss: a Dice over all classes where an error costs its class distance.

    With :math:`M` the class distance matrix (divided by its maximum so that the largest distance is 1), the
    Wasserstein distance between the softmax prediction :math:`p_i` and the one-hot label :math:`l_i` of voxel
    :math:`i` is :math:`W_i = \sum_c M_{l_i c}\, p_{ic}`, and

    .. math::
        TP = \sum_i \alpha_{l_i} (1 - W_i), \qquad
        L = 1 - \frac{2\,TP + s_{nr}}{2\,TP + \sum_i W_i + s_{dr}}

    with the paper's weighting (``weighting_mode="default"``): :math:`\alpha_0 = 0` for the background, class 0,
    and 1 for every other class. ``weighting_mode="GDL"`` (Tilborghs et al. 2020) uses
    :math:`\alpha_l = 1/(V_l + 1)` with :math:`V_l` the class volume and denominator
    :math:`\sum_i \alpha_{l_i}(2 - W_i)`. One value per item; ``reduction="none"`` returns ``(B,)``, as MONAI.
    Same arguments, defaults and numbers as MONAI's ``GeneralizedWassersteinDiceLoss``; the target may be a label
    map ``(B, 1, *spatial)`` or ``(B, *spatial)`` (MONAI's form), or one-hot ``(B, C, *spatial)``.

    The softmax over all ``C`` classes is part of the loss (it takes logits) and every class takes part: the
    weighting :math:`\alpha` decides what the background counts for, so there is no ``include_background``,
    ``sigmoid`` or ``other_act``. ``dist_matrix`` is required: ``C x C``, non-negative, zero diagonal, not all
    zero; class 0 is the background, so a single-channel input is refused (give the two-class logits
    ``(0, x)``). ``ignore_index``: ignored voxels take no part at all, neither in :math:`TP`
    nor in :math:`\sum_i W_i` (nor in the volumes of the ``"GDL"`` weighting), as if they were cropped out.

    Empty classes: an absent foreground class adds nothing to :math:`TP`; probability put on it is an error costed
    by :math:`M`. An item that is all background has :math:`TP = 0` by the paper's :math:`\alpha_0 = 0`: it scores
    about 1 unless background is predicted almost perfectly (:math:`\sum_i W_i \ll s_{dr}`), then about 0; both are
    finite.

    Reference: Fidon, Li, Garcia-Peraza-Herrera, Ekanayake, Kitchen, Ourselin, Vercauteren, "Generalised
    Wasserstein Dice Score for Imbalanced Multi-class Segmentation using Holistic Convolutional Networks",
    BrainLes (MICCAI workshop) 2017.
    """

    def __init__(
        self,
        dist_matrix: Sequence[Sequence[float]] | torch.Tensor | np.ndarray,
        weighting_mode: str = "default",
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(True, False, False, True, None, reduction, ignore_index)
        m = torch.as_tensor(dist_matrix, dtype=torch.float32)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
            raise ValueError(f"dist_matrix must be a square C x C matrix with C >= 2, got shape {tuple(m.shape)}")
        if not torch.isfinite(m).all() or (m < 0).any():
            raise ValueError("dist_matrix must hold finite non-negative class distances")
        if (m.diagonal() != 0).any():
            raise ValueError(f"dist_matrix must have a zero diagonal, got {m.diagonal().tolist()}")
        if m.max() <= 0:
            raise ValueError("dist_matrix is all zero: no error would cost anything")
        if weighting_mode not in GWDL_WEIGHTING_MODES:
            raise ValueError(f"unsupported weighting_mode {weighting_mode!r}; choose one of {GWDL_WEIGHTING_MODES}")
        self.register_buffer("dist_matrix", m / m.max(), persistent=False)
        self.weighting_mode = weighting_mode
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    def per_item(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Generalised Wasserstein Dice loss per item, ``(B, 1)``."""
        num_classes = self.dist_matrix.shape[0]
        if input.ndim >= 2 and input.shape[1] != num_classes:
            binary_hint = (
                ". A single channel is binary: give the two channels (background, foreground) the matrix describes, "
                "torch.cat([torch.zeros_like(x), x], 1) for a foreground logit x (the softmax of (0, x) is the sigmoid)"
                if input.shape[1] == 1
                else ""
            )
            raise ValueError(
                f"{self.loss_name}: input has {input.shape[1]} channels but dist_matrix is {num_classes} x "
                f"{num_classes} (input shape {tuple(input.shape)}){binary_hint}"
            )
        if isinstance(target, torch.Tensor) and isinstance(input, torch.Tensor) and target.ndim == input.ndim - 1:
            target = target.unsqueeze(1)  # MONAI's (B, *spatial) label map
        prep = self.prepare(input, target)
        probs = prep.probs.flatten(2)  # (B, C, N)
        labels = prep.labels.flatten(1)  # (B, N), 0 at ignored voxels
        valid = torch.ones_like(probs[:, 0]) if prep.mask is None else prep.mask.flatten(1)
        m = self.dist_matrix.to(probs)
        # Σ_c M[l_i, c] p_ic: one (C×C)·(C×N) product per item, then pick each voxel's true row l_i
        expected_cost = torch.matmul(m, probs)  # (B, C, N)
        wasserstein = expected_cost.gather(1, labels.unsqueeze(1)).squeeze(1) * valid  # (B, N)
        if self.weighting_mode == "GDL":
            volumes = prep.target.flatten(2).sum(-1)
            alpha = 1.0 / (volumes + 1.0)
        else:
            alpha = torch.ones(num_classes, dtype=probs.dtype, device=probs.device)
            alpha[0] = 0.0
            alpha = alpha.expand(probs.shape[0], num_classes)
        voxel_alpha = alpha.gather(1, labels) * valid
        true_positive = (voxel_alpha * (1.0 - wasserstein)).sum(1)
        if self.weighting_mode == "GDL":
            denominator = (voxel_alpha * (2.0 - wasserstein)).sum(1)
        else:
            denominator = 2.0 * true_positive + wasserstein.sum(1)
        loss = 1.0 - (2.0 * true_positive + self.smooth_nr) / (denominator + self.smooth_dr)
        return loss.unsqueeze(1)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reduce(self.per_item(input, target)[:, 0], self.reduction)


@register("jaccard", "region", "Rahman & Wang, Optimizing Intersection-Over-Union, ISVC 2016")
class JaccardLoss(_PerClassRegionLoss):
    r"""Soft Jaccard (IoU) loss per class: :math:`1 - \frac{TP + s_{nr}}{TP + FP + FN + s_{dr}}`.

    ``squared_pred`` uses :math:`\sum p^2 + \sum g^2 - TP` as the union (MONAI's squared form). MONAI's
    ``DiceLoss(jaccard=True)`` computes :math:`1 - \frac{2TP + s_{nr}}{2(TP + FP + FN) + s_{dr}}`: the same loss
    with its smoothing terms halved, so ``JaccardLoss(smooth_nr=s, smooth_dr=t)`` gives exactly MONAI's
    ``DiceLoss(jaccard=True, smooth_nr=2s, smooth_dr=2t)`` (the same numbers for any ``squared_pred``,
    ``batch``, ``weight``, ``ignore_index``, ``soft_label``). Defaults are MONAI's (``1e-5``). Soft targets and
    ``soft_label`` as :class:`DiceLoss`.

    Empty classes: a class absent from target and prediction scores :math:`1 - s_{nr}/s_{dr} = 0`; predicting it
    anyway costs close to 1, as in Dice. ``reduction="none"`` returns ``(B, C, 1, ...)``.

    Reference: Rahman & Wang, "Optimizing Intersection-Over-Union in Deep Neural Networks for Image Segmentation",
    ISVC 2016.
    """

    accepts_soft_target = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        squared_pred: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        soft_label: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(
            include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, batch, weight, ignore_index
        )
        self.squared_pred = squared_pred
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.soft_label = soft_label

    def class_loss(self, prep: Prepared) -> torch.Tensor:
        tp, fp, fn = overlap_stats(prep, self.batch, self.squared_pred, self.soft_label)
        return 1.0 - (tp + self.smooth_nr) / (tp + fp + fn + self.smooth_dr)


@register("tversky", "region", "Salehi, Erdogmus, Gholipour, Tversky loss, MLMI 2017")
class TverskyLoss(_PerClassRegionLoss):
    r"""Tversky loss per class: :math:`1 - \frac{TP + s_{nr}}{TP + \alpha FP + \beta FN + s_{dr}}`.

    :math:`\alpha` weighs the false positives and :math:`\beta` the false negatives, in every medseg loss (MONAI's
    ``TverskyLoss`` uses the same convention, so its arguments map one to one and the numbers agree). Defaults are
    MONAI's, :math:`\alpha = \beta = 0.5` (the Dice loss up to smoothing); the paper's best setting for small
    lesions, :math:`\alpha = 0.3, \beta = 0.7` (recall over precision), goes in the config overlay.
    Soft targets and ``soft_label`` as :class:`DiceLoss`. Adds to MONAI: ``weight`` per class, label-map targets,
    validation. ``reduction="none"`` returns ``(B, C)`` (``(C,)`` with ``batch=True``), as MONAI's TverskyLoss.

    Empty classes: a class absent from target and prediction scores :math:`1 - s_{nr}/s_{dr} = 0`; one that is
    only predicted scores :math:`1 - s_{nr}/(\alpha FP + s_{dr})`, close to 1.

    Reference: Salehi, Erdogmus, Gholipour, "Tversky loss function for image segmentation using 3D fully
    convolutional deep networks", MLMI (MICCAI workshop) 2017.
    """

    accepts_soft_target = True

    none_broadcasts = False  # MONAI's TverskyLoss shape

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
        soft_label: bool = False,
        ignore_index: int | None = None,
        weight: Sequence[float] | float | torch.Tensor | None = None,
    ) -> None:
        super().__init__(
            include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, batch, weight, ignore_index
        )
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha (FP weight) and beta (FN weight) must be non-negative, got {alpha}, {beta}")
        self.fp_weight = float(alpha)
        self.fn_weight = float(beta)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.soft_label = soft_label

    def class_loss(self, prep: Prepared) -> torch.Tensor:
        tp, fp, fn = overlap_stats(prep, self.batch, soft_label=self.soft_label)
        tversky_index = (tp + self.smooth_nr) / (tp + self.fp_weight * fp + self.fn_weight * fn + self.smooth_dr)
        return 1.0 - tversky_index


#: floor of the focal Tversky base: keeps ``x ** (1/gamma)`` and its gradient finite at a perfect prediction
#: (and when float rounding makes ``1 - TI`` a hair negative)
_FOCAL_TVERSKY_FLOOR = 1e-12


@register("focal_tversky", "region", "Abraham & Khan, Focal Tversky loss, ISBI 2019")
class FocalTverskyLoss(TverskyLoss):
    r"""Focal Tversky loss: each class's Tversky loss raised to :math:`1/\gamma`, then the class mean.

    .. math::
        L = \frac{1}{C} \sum_c \big(1 - TI_c\big)^{1/\gamma}, \qquad
        TI_c = \frac{TP_c + s_{nr}}{TP_c + \alpha FP_c + \beta FN_c + s_{dr}}

    The exponent is applied per class, before the mean (and ``weight``). Defaults from the paper:
    :math:`\alpha = 0.3` on FP, :math:`\beta = 0.7` on FN (the paper names them the other way round: its
    :math:`\alpha = 0.7` weighs the FN term), :math:`\gamma = 4/3`. With :math:`\gamma > 1` the loss is larger
    than the Tversky loss and keeps a strong gradient for nearly correct classes; the base is floored at
    :math:`10^{-12}` so the gradient stays finite at a perfect prediction. Smoothing: MONAI's defaults.

    Empty classes: a class absent from target and prediction scores :math:`0^{1/\gamma} \approx 0`; one only
    predicted scores close to 1. Soft targets and ``soft_label`` as :class:`DiceLoss`.

    Reference: Abraham & Khan, "A Novel Focal Tversky Loss Function with Improved Attention U-Net for Lesion
    Segmentation", ISBI 2019.
    """

    none_broadcasts = True  # ``(B, C', 1, ...)`` like the other medseg region losses (no MONAI class to follow)

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 4.0 / 3.0,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        soft_label: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            alpha,
            beta,
            reduction,
            smooth_nr,
            smooth_dr,
            batch,
            soft_label,
            ignore_index,
            weight,
        )
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        self.gamma = float(gamma)

    def class_loss(self, prep: Prepared) -> torch.Tensor:
        return super().class_loss(prep).clamp_min(_FOCAL_TVERSKY_FLOOR).pow(1.0 / self.gamma)


@register("asym_similarity", "region", "Hashemi et al., Asymmetric loss functions, IEEE Access 2018")
class AsymmetricSimilarityLoss(TverskyLoss):
    r"""Asymmetric similarity loss: one minus the soft :math:`F_\beta` score per class.

    .. math::
        L = 1 - \frac{TP + s_{nr}}{TP + \frac{\beta^2}{1+\beta^2} FN + \frac{1}{1+\beta^2} FP + s_{dr}}

    (:math:`F_\beta = \frac{(1+\beta^2) TP}{(1+\beta^2) TP + \beta^2 FN + FP}` divided through by
    :math:`1+\beta^2`). This is :class:`TverskyLoss` with :math:`\alpha = 1/(1+\beta^2)` on FP and
    :math:`\beta^2/(1+\beta^2)` on FN, so it matches MONAI's ``TverskyLoss(alpha=1/(1+β²), beta=β²/(1+β²))``.
    Note ``beta`` here is :math:`F_\beta`'s :math:`\beta` (default 1.5, the paper's), not Tversky's FN weight.
    :math:`\beta > 1` favours recall. (Some survey code swaps the two weights.) Smoothing: MONAI's defaults.

    Empty classes: as :class:`TverskyLoss` (0 when absent from target and prediction). Soft targets and
    ``soft_label`` as :class:`DiceLoss`.

    Reference: Hashemi, Salehi, Erdogmus, Prabhu, Warfield, Gholipour, "Asymmetric Loss Functions and Deep
    Densely-Connected Networks for Highly-Imbalanced Medical Image Segmentation: Application to Multiple Sclerosis
    Lesion Detection", IEEE Access 2018.
    """

    none_broadcasts = True  # ``(B, C', 1, ...)`` like the other medseg region losses (no MONAI class to follow)

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        beta: float = 1.5,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        soft_label: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        f_beta_squared = float(beta) ** 2
        super().__init__(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            1.0 / (1.0 + f_beta_squared),
            f_beta_squared / (1.0 + f_beta_squared),
            reduction,
            smooth_nr,
            smooth_dr,
            batch,
            soft_label,
            ignore_index,
            weight,
        )
        self.f_beta = float(beta)


@register("sens_spec", "region", "Brosch et al., Deep convolutional encoder networks for MS lesions, MICCAI 2015")
class SensitivitySpecificityLoss(_PerClassRegionLoss):
    r"""Sensitivity-specificity loss: squared errors on the positives and on the negatives, each normalised.

    .. math::
        L_c = r \frac{\sum_i (g_{ic} - p_{ic})^2 g_{ic}}{\sum_i g_{ic} + s_{dr}}
            + (1 - r) \frac{\sum_i (g_{ic} - p_{ic})^2 (1 - g_{ic})}{\sum_i (1 - g_{ic}) + s_{dr}}

    per item and class, then the class mean (and ``weight``). The first term is a soft miss rate
    (1 − sensitivity), the second a soft false-alarm rate (1 − specificity); ``r=0.05`` is the paper's weight.
    The squared errors split by :math:`g` are not functions of TP/FP/FN, so this loss does its own single pass;
    with a softmax and hard labels it reads the label map instead of a one-hot target (the positives' errors
    :math:`(1 - p_{il})^2` gathered at each voxel's label, the negatives' :math:`p_{ic}^2` summed with the label's own
    entry left out, closed-form backward: :func:`~medseg.losses._label_sums.softmax_label_squares`).
    Ignored voxels count neither as positives nor as negatives. ``s_{dr}=1e-5`` only guards empty denominators.

    Empty classes: a class absent from the target has no positives, its first term is :math:`0/s_{dr} = 0` and its
    second term measures the probability put on it; a class filling the whole image has second term 0.

    Reference: Brosch, Yoo, Tang, Li, Traboulsee, Tam, "Deep Convolutional Encoder Networks for Multiple Sclerosis
    Lesion Segmentation", MICCAI 2015.
    """

    accepts_soft_target = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        r: float = 0.05,
        reduction: str = "mean",
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(
            include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, batch, weight, ignore_index
        )
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"r must be in [0, 1], got {r}")
        self.r = float(r)
        self.smooth_dr = float(smooth_dr)

    def class_loss(self, prep: Prepared) -> torch.Tensor:
        if label_squares_path(prep):
            return self._label_map_class_loss(prep)
        positives = prep.target
        negatives = prep.masked(1.0 - positives)
        squared_error = (positives - prep.masked(prep.probs)).square()
        dims = prep.spatial_dims if not self.batch else [0, *prep.spatial_dims]
        miss = (squared_error * positives).sum(dims) / (positives.sum(dims) + self.smooth_dr)
        false_alarm = (squared_error * negatives).sum(dims) / (negatives.sum(dims) + self.smooth_dr)
        return self.r * miss + (1.0 - self.r) * false_alarm

    def _label_map_class_loss(self, prep: Prepared) -> torch.Tensor:
        r"""Softmax and hard labels: the squared errors from the label map (:func:`softmax_label_squares`), the
        positives' :math:`\sum_{l_i = c} (1 - p_{ic})^2` and the negatives' :math:`\sum_{l_i \ne c} p_{ic}^2`, no
        one-hot target."""
        sums = softmax_label_squares(prep)
        miss, false_alarm, positives = sums.miss, sums.neg_sq, sums.count
        negatives = positives.sum(1, keepdim=True) - positives  # each voxel that takes part has one label
        first = prep.classes[0]
        miss, false_alarm, positives, negatives = (t[:, first:] for t in (miss, false_alarm, positives, negatives))
        if self.batch:
            miss, false_alarm, positives, negatives = (t.sum(0) for t in (miss, false_alarm, positives, negatives))
        miss = miss / (positives + self.smooth_dr)
        false_alarm = false_alarm / (negatives + self.smooth_dr)
        return self.r * miss + (1.0 - self.r) * false_alarm


@register("t_loss", "region", "Gonzalez-Jimenez et al., Robust T-Loss for Medical Image Segmentation, MICCAI 2023")
class RobustTLoss(_PerClassRegionLoss):
    r"""Robust T-Loss: negative log-likelihood of a multivariate Student-t over the voxels, with learnable dof.

    For each item and class, with :math:`\delta = p_c - g_c` over the :math:`D` voxels of the image that take part,
    degrees of freedom :math:`\nu' = e^{\nu} + \epsilon` (:math:`\epsilon = 10^{-8}`, the authors' value, keeps
    :math:`\nu' > 0`) and identity scale matrix,

    .. math::
        L = \log\Gamma\big(\tfrac{\nu'}{2}\big) - \log\Gamma\big(\tfrac{\nu' + D}{2}\big)
            + \tfrac{D}{2} \log(\pi \nu') + \tfrac{\nu' + D}{2} \log\Big(1 + \frac{\lVert\delta\rVert^2}{\nu'}\Big)

    then the mean over items and classes (and ``weight``). Small :math:`\nu'` makes the loss grow only
    logarithmically in the residual (robust to noisy labels); large :math:`\nu'` approaches a squared error.

    :math:`\nu` is an ``nn.Parameter`` (initialised to ``nu=1.0``, the authors' value) learnt with the network:
    **the optimizer must include the loss's parameters**, e.g. ``Adam([*net.parameters(), *loss.parameters()])``
    (the authors give it its own learning rate); otherwise it stays at its initial value. :math:`D` is counted at
    run time (not fixed at construction as in the reference code), so one instance serves 2D and 3D patches of any
    size; ignored voxels are left out of :math:`\delta` and of :math:`D`. The authors apply it to the foreground
    probability of a binary softmax (``softmax=True, include_background=False`` with two classes); for several
    classes each channel is its own Student-t. Their released code also fixes a per-voxel log-precision
    :math:`\lambda = 1` (:math:`\Sigma^{-1} = e\,I`: it scales :math:`\lVert\delta\rVert^2` by :math:`e` and adds
    the constant :math:`-D/2`); this class uses the plain Student-t with :math:`\Sigma = I`.

    The value is a log-likelihood, not a score in [0, 1]: it includes the normalising terms (which depend on
    :math:`\nu` and so must stay) and becomes negative for large :math:`D`; a perfect prediction is still its
    minimum for a given :math:`\nu`.

    Empty classes: nothing is divided by a class size; an absent class only adds its predicted probabilities to
    :math:`\delta`. An item whose voxels are all ignored (:math:`D = 0`) scores 0.

    Reference: Gonzalez-Jimenez, Lionetti, Gottfrois, Gröger, Pouly, Navarini, "Robust T-Loss for Medical Image
    Segmentation", MICCAI 2023.
    """

    accepts_soft_target = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        nu: float = 1.0,
        epsilon: float = 1e-8,
        reduction: str = "mean",
        weight: Sequence[float] | float | torch.Tensor | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(
            include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, False, weight, ignore_index
        )
        if epsilon < 0:
            raise ValueError(f"epsilon must be non-negative, got {epsilon}")
        self.nu = nn.Parameter(torch.tensor(float(nu)))
        self.epsilon = float(epsilon)

    def class_loss(self, prep: Prepared) -> torch.Tensor:
        residual = prep.masked(prep.probs) - prep.target
        squared_norm = residual.square().flatten(2).sum(-1)  # (B, C')
        voxels = prep.voxel_count().to(squared_norm).unsqueeze(1)  # D per item
        dof = self.nu.to(squared_norm).exp() + self.epsilon
        return (
            torch.lgamma(dof / 2)
            - torch.lgamma((dof + voxels) / 2)
            + voxels / 2 * torch.log(math.pi * dof)
            + (dof + voxels) / 2 * torch.log1p(squared_norm / dof)
        )
