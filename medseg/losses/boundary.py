"""Boundary-level losses: distance-map weighted, erosion-based and boundary-voxel based, and two distance-weighted CEs.

Distance and weight maps come from the batch: :class:`~medseg.transforms.DistanceMapd` computes them once per volume,
in millimetres, in the data pipeline, ``CacheDataset`` keeps them, and a loss reads them from
``forward(input, target, dist=...)`` (``weight=...`` for :class:`UNetWeightedCELoss`). Each class says which
``DistanceMapd`` mode to put in the pipeline. Without a map a loss computes it from the target on every call with
:func:`~medseg.transforms.distance_maps` (the slow path: one distance transform per item and class per step, on the
CPU unless cuCIM is installed, in voxel units unless ``spacing`` is given); ``compute_missing_map=False`` turns a
missing map into a ``ValueError`` instead, so that a pipeline lacking ``DistanceMapd`` cannot slow training down
unnoticed.

A map that carries its record (a MetaTensor from ``DistanceMap``, or a batch map to which
:class:`medseg.engine.PrepareBatchWithAux` attached its ``DistanceMapd`` sidecar) must be of the mode the loss reads,
and of the loss's ``spacing`` when the loss was given one: otherwise ``ValueError``. A plain tensor is taken as it is
(its mode is the caller's responsibility; the value-range check below still applies).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch.nn import functional as F

from ..transforms import BACKENDS, distance_maps
from ..transforms._record import read_map_record
from ._aux import checked_map
from ._erosion import eroded_errors
from ._label_sums import label_squares_path, softmax_label_squares
from ._neighbour_kl import NeighbourDivergence, forward_divergences
from ._prediction_maps import channel_argmax, prediction_distances_squared, weighted_squared_error
from ._prepare import Prepared, SegmentationLoss, accumulation_dtype, prepare, reduce
from .pixel import prepare_exclusive, reduce_over_voxels, voxel_nll
from .region import _PerClassRegionLoss
from .registry import register

__all__ = [
    "ActiveBoundaryLoss",
    "BoundaryDoULoss",
    "BoundaryLoss",
    "HausdorffDTLoss",
    "HausdorffERLoss",
    "LogHausdorffDTLoss",
    "RegionWiseLoss",
    "ShapeAwareLoss",
    "UNetWeightedCELoss",
]

Spacing = float | Sequence[float]

#: the values each map mode can take; a map outside its range was made with another mode
MAP_RANGES: dict[str, tuple[float, float]] = {
    "signed": (-math.inf, math.inf),
    "unsigned": (0.0, math.inf),
    "rrw": (-1.0, 1.0),
    "unet_weight": (0.0, math.inf),
}


def _checked_spacing(spacing: Spacing | None) -> Spacing | None:
    if spacing is None:
        return None
    values = torch.as_tensor(spacing, dtype=torch.float64).flatten()
    if values.numel() == 0 or not bool(torch.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"spacing must be positive and finite (one value or one per spatial axis), got {spacing}")
    return float(values[0]) if values.numel() == 1 else tuple(values.tolist())


def label_boundary(labels: torch.Tensor, edge_is_outside: bool) -> torch.Tensor:
    """Voxels of a label map ``(N, *spatial)`` whose label differs from a face neighbour's (4 in 2D, 6 in 3D).

    ``edge_is_outside``: the voxels on the patch edge are boundary too (the edge bounds every region, as zero padding
    does); otherwise the edge is transparent (a region cut by the patch edge has no boundary there). One pass over
    the label map serves every class.
    """
    boundary = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for dim in range(1, labels.ndim):
        size = labels.shape[dim]
        differs = labels.narrow(dim, 0, size - 1) != labels.narrow(dim, 1, size - 1)
        boundary.narrow(dim, 0, size - 1).logical_or_(differs)
        boundary.narrow(dim, 1, size - 1).logical_or_(differs)
        if edge_is_outside:
            boundary.select(dim, 0).fill_(True)
            boundary.select(dim, size - 1).fill_(True)
    return boundary


class _MapLoss(SegmentationLoss):
    """A loss that reads a distance or weight map from the batch, or computes it from the target.

    Subclasses set :attr:`map_mode` (the ``DistanceMapd`` mode they read) and call :meth:`read_map`, which checks
    the map's record (mode, and spacing when the loss was given one) where the map carries one.
    """

    map_mode: ClassVar[str] = "signed"
    aux_keys = ("dist",)

    def __init__(
        self,
        include_background: bool,
        to_onehot_y: bool,
        sigmoid: bool,
        softmax: bool,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None,
        reduction: str,
        ignore_index: int | None,
        spacing: Spacing | None,
        backend: str,
        compute_missing_map: bool,
    ) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, ignore_index)
        if backend not in BACKENDS:
            raise ValueError(f"unknown distance backend {backend!r}; choose one of {BACKENDS}")
        self.spacing = _checked_spacing(spacing)
        self.backend = backend
        self.compute_missing_map = compute_missing_map

    def compute_map(self, prep: Prepared, **map_options: float | bool) -> torch.Tensor:
        """The slow path: :attr:`map_mode`'s map of the prepared target (kept classes), ignored voxels masked."""
        maps = distance_maps(
            prep.target, self.map_mode, spacing=self.spacing, mask=prep.mask, backend=self.backend, **map_options
        )
        return maps.to(prep.logits.dtype)

    def read_map(
        self, value: torch.Tensor | None, prep: Prepared, num_classes: int, **map_options: float | bool
    ) -> torch.Tensor:
        """The map from the batch, checked, as ``(B, C', *spatial)`` for the kept classes (``(B, 1 or C, ...)`` for
        ``unet_weight``) in the logits' dtype; computed from the target when ``value`` is ``None``."""
        key, mode, name = self.aux_keys[0], self.map_mode, type(self).__name__
        logits = prep.logits
        kept = logits.shape[1]
        channels = (1, num_classes) if mode == "unet_weight" else (num_classes, kept)
        expected = (
            f"({logits.shape[0]}, {' or '.join(str(c) for c in sorted(set(channels)))}, "
            f"{', '.join(str(s) for s in logits.shape[2:])})"
        )
        if value is None:
            if not self.compute_missing_map:
                raise ValueError(
                    f"{name} needs the aux tensor {key!r} (DistanceMapd mode {mode!r}) of shape {expected}: add "
                    f"DistanceMapd(keys='label', mode={mode!r}, output_key={key!r}) to the pipeline and call "
                    f"loss(input, target, {key}=batch[{key!r}]), or set compute_missing_map=True"
                )
            return self.compute_map(prep, **map_options)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{key} must be a torch tensor, got {type(value).__name__}")
        value, _ = checked_map(value, name, key, mode, self.spacing)
        if (
            value.ndim != logits.ndim
            or value.shape[0] != logits.shape[0]
            or value.shape[2:] != logits.shape[2:]
            or value.shape[1] not in channels
        ):
            raise ValueError(
                f"{key} map shape {tuple(value.shape)} does not match the input {tuple(logits.shape)}: {name} expects "
                f"{expected} (one channel per class of the input, or per kept class)"
            )
        if mode != "unet_weight" and value.shape[1] != kept:
            value = value[:, prep.classes[0] :]
        value = value.to(logits.dtype)
        # amin and amax, not aminmax: on the kept classes' slice aminmax copies the map first (7 times slower)
        lowest, highest = float(value.amin()), float(value.amax())
        if not (math.isfinite(lowest) and math.isfinite(highest)):
            raise ValueError(f"{key} map contains NaN or inf values")
        low, high = MAP_RANGES[mode]
        if lowest < low or highest > high:
            raise ValueError(
                f"{key} map values span [{lowest:g}, {highest:g}], outside [{low:g}, {high:g}] of DistanceMapd mode "
                f"{mode!r} that {name} reads: was the map made with another mode?"
            )
        return value


class _ProbabilityMapLoss(_MapLoss):
    """mean(p · map) per item and class: the boundary and region-wise losses."""

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reduction: str = "mean",
        batch: bool = False,
        ignore_index: int | None = None,
        spacing: Spacing | None = None,
        backend: str = "auto",
        compute_missing_map: bool = True,
    ) -> None:
        super().__init__(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            reduction,
            ignore_index,
            spacing,
            backend,
            compute_missing_map,
        )
        self.batch = batch

    def forward(self, input: torch.Tensor, target: torch.Tensor, dist: torch.Tensor | None = None) -> torch.Tensor:
        prep = self.prepare(input, target)
        class_map = self.read_map(dist, prep, input.shape[1])
        weighted = (prep.masked(prep.probs) * class_map).sum(prep.spatial_dims)
        voxels = prep.voxel_count().clamp_min(1)
        if self.batch:
            loss = weighted.sum(0) / voxels.sum()
        else:
            loss = weighted / voxels[:, None]
        return reduce(loss, self.reduction)


@register(
    "boundary",
    "boundary",
    "Kervadec, Bouchtiba, Desrosiers, Granger, Dolz, Ben Ayed, Boundary loss for highly unbalanced segmentation, "
    "MIDL 2019",
)
class BoundaryLoss(_ProbabilityMapLoss):
    r"""Boundary loss: probabilities weighted by the target's signed distance map, :math:`\mathrm{mean}(p_c \phi_c)`.

    .. math:: L = \frac{1}{|C'|} \sum_{c} \frac{1}{N} \sum_i p_{ic}\, \phi_c(i)

    :math:`\phi_c` is the signed distance to the boundary of class c: negative inside, positive outside, 0 on the inner
    boundary layer (Kervadec's ``EDT - 1``). **Negative by definition**: a perfect prediction scores
    :math:`-\mathrm{mean}(g\,|\phi|) \le 0`, which is its minimum (each voxel pays least by putting all its mass on
    the class whose map is lowest there, its own), not 0. Kervadec et al. use it beside a region loss (Dice or GDL)
    whose weight falls each epoch (:func:`medseg.engine.rebalance_schedule`).

    Map: ``forward(input, target, dist=...)`` with ``DistanceMapd(keys="label", mode="signed", num_classes=C)`` in the
    pipeline, ``(B, C, *spatial)`` (or ``(B, C', ...)`` for the kept classes), in millimetres from the image's
    spacing. Slow path without it: computed from the target each call, with ``spacing`` (default: voxel units).

    Empty and full classes: the map is +patch diagonal for a class absent from the item (its probability costs as
    much as at the farthest voxel of the patch) and −patch diagonal for a class that fills it (the loss rewards it
    fully), the transform's rule; MONAI's map is 0 there, so the numbers agree with MONAI's ``BoundaryLoss`` (to
    1e-5, at unit spacing) when every class has a boundary in every item.

    ``reduction="none"`` returns ``(B, C')`` (``(C',)`` with ``batch=True``), as MONAI. ``batch=True`` averages over
    the batch's voxels. Ignored voxels (``ignore_index``) take no part. Defaults are MONAI's (no activation: pass
    ``softmax=True`` for logits).

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, reduction: MONAI's, as in
            :class:`~medseg.losses.DiceLoss`.
        batch: average each class over the batch's voxels instead of per item.
        ignore_index: label value whose voxels take no part (e.g. 255).
        spacing: voxel size for the slow path (mm; one value or one per spatial axis); ``None``: voxel units.
        backend: distance transform backend of the slow path: ``auto``, ``edt``, ``scipy``, ``sitk``, ``cucim``.
        compute_missing_map: without a map, compute it from the target (slow path); ``False``: raise ``ValueError``.

    Reference: Kervadec, Bouchtiba, Desrosiers, Granger, Dolz, Ben Ayed, "Boundary loss for highly unbalanced
    segmentation", MIDL 2019 (MedIA 2021).
    """

    map_mode = "signed"


@register(
    "region_wise",
    "boundary",
    "Valverde & Tohka, Region-wise loss for biomedical image segmentation, Pattern Recognition 2023",
)
class RegionWiseLoss(_ProbabilityMapLoss):
    r"""Region-wise loss with rectified region-wise (RRW) maps: :math:`\mathrm{mean}(p_c\,\mathrm{RRW}_c)`.

    .. math:: L = \frac{1}{|C'|} \sum_{c} \frac{1}{N} \sum_i p_{ic}\, z_c(i), \qquad
        z_c = \begin{cases} -d_{in,c} / \max d_{in,c} & \text{inside class } c \\ 1 & \text{outside} \end{cases}

    with :math:`d_{in,c}` the distance from a voxel of class c to the nearest voxel outside it. **Negative by
    definition**: a perfect prediction scores :math:`-\mathrm{mean}(g\,d_{in}/\max d_{in}) < 0`, its minimum (per
    voxel the own class's map is below 0 and every other class's is 1). The rectified maps bound every weight to
    [−1, 1], the stability fix of Valverde & Tohka over the plain distance maps of the boundary loss.

    Map: ``forward(input, target, dist=...)`` with ``DistanceMapd(keys="label", mode="rrw", num_classes=C)``,
    ``(B, C, *spatial)`` (or the kept classes). Slow path without it: computed each call, with ``spacing``.

    Empty and full classes: a class absent from the item has the map all 1 (every probability it gets is
    penalised), a class filling it −1.

    ``reduction="none"`` returns ``(B, C')`` (``(C',)`` with ``batch=True``). Ignored voxels take no part.
    No activation by default (MONAI's convention): pass ``softmax=True`` for logits.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, reduction: MONAI's, as in
            :class:`~medseg.losses.DiceLoss`.
        batch: average each class over the batch's voxels instead of per item.
        ignore_index: label value whose voxels take no part (e.g. 255).
        spacing: voxel size for the slow path (mm; one value or one per spatial axis); ``None``: voxel units.
        backend: distance transform backend of the slow path: ``auto``, ``edt``, ``scipy``, ``sitk``, ``cucim``.
        compute_missing_map: without a map, compute it from the target (slow path); ``False``: raise ``ValueError``.

    Reference: Valverde & Tohka, "Region-wise loss for biomedical image segmentation", Pattern Recognition 136,
    2023.
    """

    map_mode = "rrw"


@register(
    "hausdorff_dt",
    "boundary",
    "Karimi & Salcudean, Reducing the Hausdorff Distance in Medical Image Segmentation with Convolutional Neural "
    "Networks, IEEE TMI 2020",
)
class HausdorffDTLoss(_MapLoss):
    r"""Hausdorff distance loss from distance transforms of the target and of the thresholded prediction.

    .. math:: L = \frac{1}{|C'|} \sum_c \frac{1}{N} \sum_i (p_{ic} - g_{ic})^2\,
        \big(d_{p,c}(i)^\alpha + d_{g,c}(i)^\alpha\big)

    :math:`d_{g,c}` is the two-sided distance to the boundary of class c in the target (inside: to the nearest voxel
    outside, outside: to the nearest voxel inside), :math:`d_{p,c}` the same for the prediction thresholded at
    :math:`p > 0.5` (detached: no gradient flows through it). α = 2 (Karimi & Salcudean's choice, MONAI's default).

    Maps: :math:`d_g` from ``forward(input, target, dist=...)`` with ``DistanceMapd(keys="label", mode="unsigned",
    num_classes=C)`` ``(B, C, *spatial)``; without it, computed each call (slow path). :math:`d_p` is recomputed every
    call from the current prediction: on the CPU (``edt``) one two-label pass per item and class with a boundary
    gives both of its sides, squared (a class in a small box is computed inside it), nothing for an empty or full
    class; cuCIM for CUDA tensors when installed (:func:`~medseg.losses._prediction_maps.prediction_distances_squared`;
    it is the loss's dominant cost: one exact EDT per item and class). ``spacing`` (mm per axis) applies to :math:`d_p`
    and to the slow path's :math:`d_g`; a cached map carries its own, and with ``spacing=None`` :math:`d_p` takes the
    spacing the map records (per item), so that both distances are in the same units (voxel units when neither
    says; a map recording another spacing than a given ``spacing`` raises).

    Empty and full classes (no boundary): distance 0 everywhere, MONAI's rule, so such a class contributes nothing
    unless the thresholded prediction draws a boundary (then :math:`d_p` weighs its errors).

    Same arguments, defaults (``include_background=False``, no activation) and numbers as MONAI's
    ``HausdorffDTLoss`` (to 1e-5, unit spacing). ``reduction="none"`` returns ``(B, C', 1, ...)`` (``(1, C', 1, ...)``
    with ``batch=True``). ``batch=True`` averages over the batch's voxels. Adds ``ignore_index`` (ignored voxels add
    no error and bound no region), spacing, cached target maps.

    Args:
        alpha: exponent of the distances (2).
        include_background, to_onehot_y, sigmoid, softmax, other_act, reduction: MONAI's, as in
            :class:`~medseg.losses.DiceLoss`.
        batch: average each class over the batch's voxels instead of per item.
        ignore_index: label value whose voxels take no part (e.g. 255).
        spacing: voxel size for the prediction's map and the slow path (mm; one value or one per spatial axis);
            ``None``: voxel units.
        backend: distance transform backend of the slow path: ``auto``, ``edt``, ``scipy``, ``sitk``, ``cucim``.
        compute_missing_map: without a map, compute it from the target (slow path); ``False``: raise ``ValueError``.

    Reference: Karimi & Salcudean, "Reducing the Hausdorff Distance in Medical Image Segmentation with Convolutional
    Neural Networks", IEEE TMI 39(2), 2020.
    """

    map_mode = "unsigned"

    def __init__(
        self,
        alpha: float = 2.0,
        include_background: bool = False,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reduction: str = "mean",
        batch: bool = False,
        ignore_index: int | None = None,
        spacing: Spacing | None = None,
        backend: str = "auto",
        compute_missing_map: bool = True,
    ) -> None:
        super().__init__(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            reduction,
            ignore_index,
            spacing,
            backend,
            compute_missing_map,
        )
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha (the distance exponent) must be positive, got {alpha}")
        self.alpha = float(alpha)
        self.batch = batch

    def prediction_distance_power(self, prep: Prepared, spacing: Spacing | torch.Tensor | None = None) -> torch.Tensor:
        r""":math:`d_p^\alpha`: the two-sided distances of the prediction thresholded at 0.5 to the power α,
        ``(B, C', *spatial)``, no gradient (squared distances from the transform, so α = 2 takes no root or power).

        ``spacing``: as :func:`~medseg.transforms.distance_maps` (one row per item allowed); default the loss's."""
        spacing = self.spacing if spacing is None else spacing
        squared = prediction_distances_squared(prep.probs.detach() > 0.5, spacing, prep.mask, self.backend)
        squared = squared.to(prep.logits.dtype)
        return squared if self.alpha == 2 else squared.pow_(self.alpha / 2)

    def forward(self, input: torch.Tensor, target: torch.Tensor, dist: torch.Tensor | None = None) -> torch.Tensor:
        prep = self.prepare(input, target)
        target_distance = self.read_map(dist, prep, input.shape[1])
        record = None if self.spacing is not None or dist is None else read_map_record(dist)
        recorded = None if record is None else record.spacings
        if recorded is not None and recorded.shape[0] == 1:
            recorded = recorded[0]
        weight = self.prediction_distance_power(prep, recorded)  # a fresh buffer: d_g^α and the mask go in place
        if self.alpha == 2:
            weight.addcmul_(target_distance, target_distance)
        else:
            weight.add_(target_distance**self.alpha)
        if prep.mask is not None:
            weight.mul_(prep.mask)
        voxels = prep.voxel_count().clamp_min(1)
        total = weighted_squared_error(prep.all_probs, prep.target, weight, prep.classes[0])
        loss = total.sum(0) / voxels.sum() if self.batch else total / voxels[:, None]
        if self.batch and self.reduction == "none":
            loss = loss.unsqueeze(0)
        return reduce(loss, self.reduction, input.ndim - 2)


class LogHausdorffDTLoss(HausdorffDTLoss):
    r"""MONAI's log form of :class:`HausdorffDTLoss`: :math:`\log(L_{HD} + 1)` of the reduced loss (per element
    with ``reduction="none"``). Same arguments, defaults and numbers as MONAI's ``LogHausdorffDTLoss``; not in the
    registry (a MONAI variant, not a loss of the survey).
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor, dist: torch.Tensor | None = None) -> torch.Tensor:
        return torch.log1p(super().forward(input, target, dist))


@register(
    "hausdorff_er",
    "boundary",
    "Karimi & Salcudean, Reducing the Hausdorff Distance in Medical Image Segmentation with Convolutional Neural "
    "Networks, IEEE TMI 2020",
)
class HausdorffERLoss(SegmentationLoss):
    r"""Erosion-based Hausdorff loss: repeated soft erosions of the squared error, weighted by their depth.

    .. math:: L = \frac{1}{|C'| N} \sum_c \sum_i \sum_{k=1}^{K} k^\alpha\, e^{(k)}_{ic}, \qquad
        e^{(0)} = (p - g)^2,\quad e^{(k)} = \mathrm{norm}\big(\max(B * e^{(k-1)} - 0.5,\ 0)\big)

    B is the mean over the voxel and its face neighbours (4 in 2D, 6 in 3D; kornia's cross kernel), zero-padded;
    norm is a min-max normalisation per item and class over the patch (skipped where the erosion is constant).
    An error region survives k erosions only if it is about k voxels thick, so :math:`k^\alpha` weighs errors far
    from the boundary more, an estimate of the Hausdorff distance. α = 2 and K = 10 (Karimi & Salcudean, kornia).
    All in torch, differentiable (references that erode in numpy lose the gradient; not twice), in the float32
    (float64) of the prepared input also under autocast. 2D and 3D (any N-D). The erosions run on blocks of whole
    (item, class) volumes that fit the CPU cache, forward and backward while a block is resident, in reused buffers;
    with ``reduction="mean"``/``"sum"`` the gradient is computed in the forward and one tensor kept for the backward
    (:mod:`medseg.losses._erosion`): about 1.4× the memory of a cross-entropy step instead of 10×.

    Same numbers (forward and gradient) as kornia's ``HausdorffERLoss`` / ``HausdorffERLoss3D`` given the softmax
    (``softmax=True`` here, kornia takes probabilities). ``reduction="none"`` returns the per-voxel eroded sum
    ``(B, C', *spatial)`` (kornia's is ``(C, B, 1, ...)``). Ignored voxels hold no error and are left out of the mean.

    Empty and full classes: a class predicted as absent where it is absent has no error and contributes 0; no map
    is involved, so nothing degenerates.

    Args:
        alpha: exponent of the erosion depth weight (2).
        k: number of erosions (10).
        include_background, to_onehot_y, sigmoid, softmax, other_act, reduction: MONAI's, as in
            :class:`~medseg.losses.DiceLoss`.
        ignore_index: label value whose voxels take no part (e.g. 255).

    Reference: Karimi & Salcudean, "Reducing the Hausdorff Distance in Medical Image Segmentation with Convolutional
    Neural Networks", IEEE TMI 39(2), 2020.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        k: int = 10,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, ignore_index)
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be finite, got {alpha}")
        if int(k) != k or k < 1:
            raise ValueError(f"k (the number of erosions) must be a positive integer, got {k}")
        self.alpha = float(alpha)
        self.k = int(k)

    def eroded_errors(self, prep: Prepared, per_voxel: bool = True) -> torch.Tensor:
        """:math:`\\sum_k k^\\alpha e^{(k)}` per voxel ``(B, C', *spatial)``, or (``per_voxel=False``) its sum over the
        voxels per item and class ``(B, C')``."""
        return eroded_errors(prep.probs, prep.target, prep.mask, self.k, self.alpha, per_voxel)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = self.prepare(input, target)
        if self.reduction == "none":
            return self.eroded_errors(prep)
        total = self.eroded_errors(prep, per_voxel=False).sum()
        if self.reduction == "sum":
            return total
        return total / (prep.voxel_count().sum() * prep.probs.shape[1]).clamp_min(1)


def _neighbour_offsets(spatial_ndim: int) -> list[tuple[int, ...]]:
    """The 8 (2D) or 26 (3D) neighbour steps, in a fixed order (ties between directions go to the first)."""
    return [step for step in itertools.product((-1, 0, 1), repeat=spatial_ndim) if any(step)]


def _dilated(seeds: torch.Tensor) -> torch.Tensor:
    """Maximum over the 3×3 (3×3×3) neighbourhood of ``(B, *spatial)``, one axis at a time (a separable max pool,
    several times faster than ``max_pool3d`` on the CPU)."""
    for axis in range(1, seeds.ndim):
        size = seeds.shape[axis]
        out = seeds.clone()
        lower, upper = out.narrow(axis, 1, size - 1), out.narrow(axis, 0, size - 1)
        torch.maximum(lower, seeds.narrow(axis, 0, size - 1), out=lower)
        torch.maximum(upper, seeds.narrow(axis, 1, size - 1), out=upper)
        seeds = out
    return seeds


def _strides(shape: list[int], device: torch.device) -> torch.Tensor:
    """Element strides of a contiguous tensor of ``shape``, as a tensor (for flat indices)."""
    return torch.tensor([math.prod(shape[d + 1 :]) for d in range(len(shape))], device=device)


@register(
    "active_boundary",
    "boundary",
    "Wang, Zhang, Cui, Ren, Yang, Xie, Hua, Bao, Xu, Active Boundary Loss for Semantic Segmentation, AAAI 2022",
)
class ActiveBoundaryLoss(_MapLoss):
    r"""Active boundary loss: at predicted boundary voxels, point the prediction's change towards the target boundary.

    1. Predicted boundary: :math:`s(x) = \sum_a \mathrm{KL}(p_x \,\|\, p_{x + e_a})` over the forward neighbour along
       each axis; seeds :math:`s > \varepsilon` with ε the smallest :math:`10^{-5} \cdot 1.2^m` that leaves at most
       ``max_boundary_ratio`` (1 %) of the item's voxels, then dilated by one voxel (3×3 / 3×3×3). No gradient.
    2. At each boundary voxel x, with :math:`D` the distance to the target boundary, the direction target is the
       neighbour (8 in 2D, 26 in 3D) with the smallest D, and the prediction is the vector of
       :math:`\mathrm{KL}(p_{x+n} \,\|\, p_x)` over the neighbours n (neighbours detached by default, the authors'
       ``isdetach``: the gradient moves :math:`p_x` only, so it is not the derivative of the loss value;
       ``detach_neighbours=False`` lets it flow through the neighbours too):

    .. math:: L = \frac{1}{|K|} \sum_{x \in K} \frac{\min(D(x), \tau)}{\tau}\,
        \mathrm{CE}_{ls}\big(\mathrm{KL}(p_{x+n} \| p_x)_{n},\ \arg\min_n D(x + n)\big)

    with label smoothing 0.2 over the M = 8 (26) directions (torch's: the target gets 0.8 + 0.2/M, the others 0.2/M;
    the authors' smoothing gives 0.8 and 0.2/M, a distribution that does not sum to 1) and distance clip τ = 20 (the
    authors' defaults). K holds the boundary voxels with a strictly closer neighbour: voxels on the target boundary
    (D = 0) and items with no target boundary have no direction to learn and are left out of the mean (the authors'
    code keeps the former in it with weight 0). Softmax over C ≥ 2 channels (the KL compares class distributions).

    D is read from the signed map of each voxel's own class: :math:`D(x) = -\phi_{y(x)}(x)`, the distance from x to
    the inner boundary layer of its region (0 on it), so ``dist`` is the ``DistanceMapd(keys="label",
    mode="signed", num_classes=C)`` map shared with :class:`BoundaryLoss` (τ is in the map's units: mm with spacing).
    Slow path without it: computed each call, with ``spacing``.

    Differences to the authors' code (understood, not copied): ε is chosen per item (theirs is one ε for the batch,
    capped at 1 % of a single image), in closed form instead of a loop; the patch edge and ignored voxels are never
    direction targets and their KL entry is 0; the distance is to the two-sided boundary layer from the cached map.

    The KL divergences are computed class by class where each class plane lies (no channel-last or padded copy of
    the batch); with detached neighbours the batch's probabilities are exponentiated once per step
    (shared by the boundary strength and the neighbour KL) and the neighbours' values gathered again in the backward
    instead of kept (:mod:`medseg.losses._neighbour_kl`): peak memory about that of a cross-entropy step.

    Returns 0 (a tensor connected to the input, not ``None``) when there is no predicted boundary. ``reduction``:
    ``"mean"`` over K, ``"sum"``, or ``"none"``: the per-voxel terms ``(B, *spatial)``, 0 off K.
    Empty classes: an absent class is never a voxel's own class, so its map is never read.

    Args:
        max_boundary_ratio: the largest share of an item's voxels that may seed the predicted boundary (0.01).
        label_smoothing: of the direction cross-entropy (0.2).
        max_clip_dist: τ, the distance beyond which the weight stays 1 (20, in the map's units).
        detach_neighbours: stop the gradient through the neighbours' predictions (the authors' default).
        to_onehot_y, reduction: as :class:`~medseg.losses.DiceLoss`.
        ignore_index: label value whose voxels take no part (e.g. 255).
        spacing: voxel size for the slow path (mm; one value or one per spatial axis); ``None``: voxel units.
        backend: distance transform backend of the slow path: ``auto``, ``edt``, ``scipy``, ``sitk``, ``cucim``.
        compute_missing_map: without a map, compute it from the target (slow path); ``False``: raise ``ValueError``.

    Reference: Wang, Zhang, Cui, Ren, Yang, Xie, Hua, Bao, Xu, "Active Boundary Loss for Semantic Segmentation",
    AAAI 2022.
    """

    map_mode = "signed"

    nan_propagates = False  # NaN logits can fall outside the voxels it scores

    def __init__(
        self,
        max_boundary_ratio: float = 0.01,
        label_smoothing: float = 0.2,
        max_clip_dist: float = 20.0,
        detach_neighbours: bool = True,
        to_onehot_y: bool = False,
        reduction: str = "mean",
        ignore_index: int | None = None,
        spacing: Spacing | None = None,
        backend: str = "auto",
        compute_missing_map: bool = True,
    ) -> None:
        super().__init__(
            True, to_onehot_y, False, True, None, reduction, ignore_index, spacing, backend, compute_missing_map
        )
        if not 0 < max_boundary_ratio <= 1:
            raise ValueError(f"max_boundary_ratio must be in (0, 1], got {max_boundary_ratio}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not (math.isfinite(max_clip_dist) and max_clip_dist > 0):
            raise ValueError(f"max_clip_dist must be a positive distance, got {max_clip_dist}")
        self.max_boundary_ratio = float(max_boundary_ratio)
        self.label_smoothing = float(label_smoothing)
        self.max_clip_dist = float(max_clip_dist)
        self.detach_neighbours = detach_neighbours

    @staticmethod
    def boundary_threshold(strength: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
        """Per item, the smallest ε = 1e-5 · 1.2^m (m ≥ 0) with at most ``limit`` values of ``strength`` above it.

        ``strength``: ``(B, N)``; ``limit``: ``(B,)`` integer counts. Returns ``(B,)`` float64.
        """
        base, step = 1e-5, 1.2
        num_values = strength.shape[1]
        top = strength.topk(min(int(limit.max()) + 1, num_values), dim=1).values.to(torch.float64)
        # the (limit+1)-th largest value must not exceed ε; when every value may pass, ε stays at its base
        cutoff = top.gather(1, limit.clamp(max=top.shape[1] - 1).unsqueeze(1))[:, 0]
        cutoff = torch.where(limit >= num_values, 0.0, cutoff)
        steps = torch.ceil(torch.log(cutoff.clamp_min(base) / base) / math.log(step))
        threshold = base * step**steps
        # the logarithm may land one step off; settle it on the values themselves
        too_many = (strength > threshold.unsqueeze(1)).sum(1) > limit
        threshold = torch.where(too_many, threshold * step, threshold)
        lower = threshold / step
        lower_suffices = (threshold > base * 1.0001) & ((strength > lower.unsqueeze(1)).sum(1) <= limit)
        return torch.where(lower_suffices, lower, threshold)

    @torch.no_grad()
    def predicted_boundary(
        self, log_probs: torch.Tensor, known: torch.Tensor | None, probs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The dilated predicted boundary ``(B, *spatial)`` (bool) from log-probabilities ``(B, C, *spatial)``.

        ``known``: ``(B, *spatial)`` bool, False at ignored voxels (they neither make nor join a boundary); ``probs``:
        ``log_probs.exp()`` where the caller has it.
        """
        spatial = log_probs.shape[2:]
        strength = torch.zeros(log_probs.shape[0], *spatial, dtype=log_probs.dtype, device=log_probs.device)
        for axis, (size, divergence) in enumerate(zip(spatial, forward_divergences(log_probs, probs), strict=True)):
            if known is not None:
                divergence = divergence * (known.narrow(1 + axis, 0, size - 1) & known.narrow(1 + axis, 1, size - 1))
            strength.narrow(1 + axis, 0, size - 1).add_(divergence)
        flat = strength.flatten(1)
        counted = flat.shape[1] if known is None else known.flatten(1).sum(1)
        limit = torch.floor(self.max_boundary_ratio * torch.as_tensor(counted, device=flat.device)).long()
        limit = limit.expand(flat.shape[0])
        threshold = self.boundary_threshold(flat, limit).to(strength.dtype)
        seeds = (strength > threshold.view(-1, *([1] * len(spatial)))).to(log_probs.dtype)
        boundary = _dilated(seeds) > 0
        return boundary if known is None else boundary & known

    def forward(self, input: torch.Tensor, target: torch.Tensor, dist: torch.Tensor | None = None) -> torch.Tensor:
        if input.ndim not in (4, 5) or input.shape[1] < 2:
            raise ValueError(
                f"ActiveBoundaryLoss takes 2D or 3D logits with C >= 2 softmax channels (B, C, *spatial), got shape "
                f"{tuple(input.shape)}; for a binary problem use two output channels"
            )
        prep = prepare(input, target, softmax=True, ignore_index=self.ignore_index)
        signed = self.read_map(dist, prep, input.shape[1])
        log_probs = prep.log_probs
        batch, classes, *spatial = log_probs.shape
        known = None if prep.mask is None else prep.mask[:, 0] > 0
        source = log_probs.detach().contiguous()
        # detached neighbours: the probabilities once, for the boundary and the neighbours' KL and its backward
        probs = source.exp() if self.detach_neighbours else None
        boundary = self.predicted_boundary(source, known, probs)

        # distance to the target boundary from each voxel's own class map; never a target: patch edge, ignored voxels
        distance = -signed.gather(1, prep.labels.unsqueeze(1))[:, 0]
        if known is not None:
            distance = distance.masked_fill(~known, math.inf)
        padding = [1, 1] * len(spatial)
        padded_distance = F.pad(distance, padding, value=math.inf).flatten()
        steps = torch.tensor(_neighbour_offsets(len(spatial)), device=input.device)
        centres = boundary.nonzero()
        # flat indices of the centres and their neighbours in the padded (B, *spatial) grid and in the plain one
        padded_strides = _strides([batch] + [size + 2 for size in spatial], input.device)
        centre_index = ((centres + torch.tensor([0] + [1] * len(spatial), device=input.device)) * padded_strides).sum(1)
        neighbour_index = centre_index.unsqueeze(1) + (steps * padded_strides[1:]).sum(1)

        centre_distance = distance[boundary]
        neighbour_distance = padded_distance[neighbour_index]
        closest, direction = neighbour_distance.min(1)
        learnable = closest < centre_distance
        centres, neighbour_index, neighbour_distance = (
            centres[learnable],
            neighbour_index[learnable],
            neighbour_distance[learnable],
        )
        inside = torch.isfinite(neighbour_distance)  # in the patch and not ignored
        voxel_strides = _strides(list(spatial), input.device)
        centre_voxel = (centres[:, 1:] * voxel_strides).sum(1, keepdim=True)
        # (M, C), indexed in the channel-first layout: the backward scatters into a (B, C, N) gradient, no transpose
        centre_log_probs = log_probs.flatten(2)[centres[:, :1], :, centre_voxel][:, 0]
        if self.detach_neighbours:
            # neighbours read class by class where they lie; one outside the patch reads the centre (KL 0)
            neighbour_voxel = torch.where(inside, centre_voxel + (steps * voxel_strides).sum(1), centre_voxel)
            counts = torch.bincount(centres[:, 0], minlength=batch).tolist()
            divergence = NeighbourDivergence.apply(centre_log_probs, source, probs, neighbour_voxel, counts)
        else:
            padded_log_probs = F.pad(log_probs, padding).movedim(1, -1).reshape(-1, classes)
            neighbour_log_probs = padded_log_probs[neighbour_index]
            divergence = (neighbour_log_probs.exp() * (neighbour_log_probs - centre_log_probs.unsqueeze(1))).sum(-1)
        divergence = divergence * inside
        terms = F.cross_entropy(
            divergence, direction[learnable], label_smoothing=self.label_smoothing, reduction="none"
        )
        terms = terms * centre_distance[learnable].clamp(max=self.max_clip_dist) / self.max_clip_dist
        if self.reduction == "none":
            flat_index = boundary.flatten().nonzero()[:, 0][learnable]
            voxel_terms = log_probs.new_zeros(batch * math.prod(spatial)).index_put((flat_index,), terms)
            return voxel_terms.view(batch, *spatial)
        if self.reduction == "sum":
            return terms.sum()
        return terms.sum() / max(terms.numel(), 1)


@register(
    "boundary_dou",
    "boundary",
    "Sun, Luo, Li, Boundary Difference over Union Loss for Medical Image Segmentation, MICCAI 2023",
)
class BoundaryDoULoss(_PerClassRegionLoss):
    r"""Boundary difference over union loss: the mismatch region over a union shrunk towards the boundary.

    .. math:: L_c = \frac{\sum p^2 + \sum g^2 - 2I + s_{nr}}{\sum p^2 + \sum g^2 - (1 + \alpha_c) I + s_{dr}},
        \qquad I = \sum p\,g, \qquad \alpha_c = \min\Big(1 - \frac{2 (C_c + s)}{S_c + s},\ 0.8\Big)

    per class (background included by default, as the authors), then the mean over classes. :math:`S_c` is the
    class's voxel count in the target, :math:`C_c` the count of its boundary voxels: voxels with a face neighbour
    (4 in 2D, 6 in 3D) outside the class, the patch edge counting as outside (the authors' zero-padded cross
    convolution); s = 1e-5. α adapts to the shape: thin or small objects (most voxels on the boundary) get α near
    −1, where the loss is :math:`1 - 2I / (\sum p^2 + \sum g^2)` (squared Dice), large compact ones approach the
    cap 0.8 (the authors' truncation), which weighs the boundary band. The numerator is
    :math:`\sum (p - g)^2 + s_{nr}`, 0 at a perfect prediction, and the denominator is computed as
    :math:`\sum (p - g)^2 + (1 - \alpha_c) I + s_{dr}`. With a softmax and hard labels the sums come from the
    label map, without a one-hot target (:func:`~medseg.losses._label_sums.softmax_label_squares`: there
    :math:`\sum (p - g)^2` is the positives' :math:`\sum (1 - p)^2` plus the negatives' :math:`\sum p^2`, no
    difference of large sums, which keeps float32 exact for confident predictions).

    Empty classes: a class absent from the target has α = −1 and :math:`I = 0`, so with the authors' smoothing
    (:math:`s_{nr} = s_{dr} = 10^{-5}`) it scores exactly 1 with no gradient, whatever is predicted (a perfect
    prediction then scores (absent classes)/C). ``smooth_nr=0`` makes it :math:`\sum p^2 / (\sum p^2 + s_{dr})`:
    0 when predicted absent, and false positives are penalised.

    The authors compute the sums over the whole batch: ``batch=True``; the default ``batch=False`` (MONAI's
    convention) computes each item on its own. ``reduction="none"`` returns ``(B, C', 1, ...)``. ``weight``: per-class
    weights as MONAI's Dice. Ignored voxels take no part in the sums (they count as outside for the boundary).
    No activation by default (MONAI's convention; the authors apply a softmax: pass ``softmax=True``).

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, reduction: MONAI's, as in
            :class:`~medseg.losses.DiceLoss`.
        smooth_nr, smooth_dr: added to the numerator and the denominator (1e-5, the authors').
        alpha_max: the cap of α (0.8, the authors' truncation).
        batch: sums over the whole batch (the authors' code) instead of per item.
        weight: per-class weights of the per-class losses.
        ignore_index: label value whose voxels take no part (e.g. 255).

    Reference: Sun, Luo, Li, "Boundary Difference over Union Loss for Medical Image Segmentation", MICCAI 2023;
    authors' code github.com/sunfan-bvb/BoundaryDoULoss.
    """

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
        alpha_max: float = 0.8,
        batch: bool = False,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(
            include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, batch, weight, ignore_index
        )
        if smooth_nr < 0 or smooth_dr <= 0:
            raise ValueError(f"smooth_nr must be >= 0 and smooth_dr > 0, got {smooth_nr} and {smooth_dr}")
        if not alpha_max < 1:
            raise ValueError(f"alpha_max must be below 1 (the denominator must stay positive), got {alpha_max}")
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.alpha_max = float(alpha_max)

    def class_loss(self, prep: Prepared) -> torch.Tensor:
        smooth = 1e-5
        if label_squares_path(prep):  # softmax and a label map: the sums by label, no one-hot target
            intersection, mismatch, area, boundary_count = self._label_map_sums(prep)
        else:
            intersection, mismatch, area, boundary_count = self._one_hot_sums(prep)
        with torch.no_grad():
            alpha = (1 - 2 * (boundary_count + smooth) / (area + smooth)).clamp(max=self.alpha_max)
        # Σp² + Σg² − (1 + α) I = Σ(p − g)² + (1 − α) I
        return (mismatch + self.smooth_nr) / (mismatch + (1 - alpha) * intersection + self.smooth_dr)

    def _one_hot_sums(self, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """I, Σ(p − g)² = Σp² + Σg² − 2I, S and C of the kept classes from the one-hot target (any activation)."""
        probs, onehot = prep.masked(prep.probs), prep.target
        dims = prep.spatial_dims if not self.batch else [0, *prep.spatial_dims]
        intersection = (probs * onehot).sum(dims)
        area = onehot.sum(dims)  # S, and the sum of g^2 (g is 0 or 1)
        mismatch = (probs * probs).sum(dims) + area - 2 * intersection
        with torch.no_grad():
            if prep.labels is None:  # multi-label one-hot target: each channel on its own
                edge = label_boundary(onehot.flatten(0, 1) > 0, edge_is_outside=True).view_as(onehot)
            else:  # exclusive classes: one pass over the label map, ignored voxels outside every class
                edge = label_boundary(self._labels_outside_ignored(prep), edge_is_outside=True).unsqueeze(1)
            boundary_count = (onehot * edge).sum(dims)
        return intersection, mismatch, area, boundary_count

    @staticmethod
    def _labels_outside_ignored(prep: Prepared) -> torch.Tensor:
        """The label map with ignored voxels at −1 (outside every class, for the boundary)."""
        return prep.labels if prep.mask is None else prep.labels.masked_fill(prep.mask[:, 0] == 0, -1)

    def _label_map_sums(self, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """I, Σ(p − g)², S and C of the kept classes from the label map (:func:`softmax_label_squares`: Σ(p − g)² is
        the positives' Σ(1 − p)² plus the negatives' Σp², no difference of large sums; the boundary voxels counted
        per label by ``scatter_add``)."""
        sums = softmax_label_squares(prep)
        area = sums.count
        with torch.no_grad():
            edge = label_boundary(self._labels_outside_ignored(prep), edge_is_outside=True)
            if prep.mask is not None:
                edge &= prep.mask[:, 0] > 0
            boundary_count = torch.zeros(area.shape, dtype=accumulation_dtype(area.device), device=area.device)
            boundary_count.scatter_add_(1, prep.labels.flatten(1), edge.flatten(1).to(boundary_count.dtype))
            boundary_count = boundary_count.to(area.dtype)
        first = prep.classes[0]
        stats = tuple(t[:, first:] for t in (sums.tp, sums.miss + sums.neg_sq, area, boundary_count))
        return tuple(t.sum(0) for t in stats) if self.batch else stats


@register(
    "shape_aware",
    "extra",
    "Jadon, A survey of loss functions for semantic segmentation, CIBCB 2020 (after Al Arif, Knapp, Slabaugh, "
    "Shape-aware deep convolutional neural network for vertebrae segmentation, MSKI 2017)",
)
class ShapeAwareLoss(_MapLoss):
    r"""Shape-aware loss: cross-entropy weighted up on predicted contour points far from the target contour.

    .. math:: L = \frac{1}{N} \sum_i (1 + E_i)\, \mathrm{CE}_i, \qquad
        E_i = \begin{cases} |\phi_{\hat y_i}(i)| & i \text{ on the contour of its predicted region} \\
        0 & \text{otherwise} \end{cases}

    Jadon's :math:`L = \sum_i \mathrm{CE}_i + \sum_i E_i\,\mathrm{CE}_i` with :math:`E_i = D(\hat C, C_{GT})` the
    distance from a point of the predicted contour :math:`\hat C` to the ground-truth contour :math:`C_{GT}` (Al Arif
    et al.'s shape-aware term; Jadon prints both sums with a minus sign in front of CE written as
    :math:`y \log \hat y`, i.e. the same positive loss). Here the predicted contour of a region is its voxels with a
    face neighbour predicted otherwise (the argmax over classes; :math:`p > 0.5` for one sigmoid channel; detached),
    and the distance to the target contour is :math:`|\phi|` of the signed map of the predicted class, 0 on the
    target's inner boundary layer: a predicted contour lying on the target's costs plain CE.

    Map: ``forward(input, target, dist=...)`` with ``DistanceMapd(keys="label", mode="signed", num_classes=C)`` (the
    map of :class:`BoundaryLoss`), in mm with the image spacing; slow path without it, with ``spacing``.

    Empty and full classes: a predicted region of a class with no target boundary in the item (absent or filling
    it) has no contour to be measured against: E = 0 there, plain CE. Softmax cross-entropy (one channel: binary
    CE with a sigmoid). ``reduction="mean"`` averages over the voxels that take part; ``"none"`` returns
    ``(B, *spatial)``.

    Args:
        to_onehot_y, reduction: as :class:`~medseg.losses.CrossEntropyLoss`.
        ignore_index: label value whose voxels take no part (e.g. 255).
        spacing: voxel size for the slow path (mm; one value or one per spatial axis); ``None``: voxel units.
        backend: distance transform backend of the slow path: ``auto``, ``edt``, ``scipy``, ``sitk``, ``cucim``.
        compute_missing_map: without a map, compute it from the target (slow path); ``False``: raise ``ValueError``.

    Reference: Jadon, "A survey of loss functions for semantic segmentation", IEEE CIBCB 2020; Al Arif, Knapp,
    Slabaugh, "Shape-aware deep convolutional neural network for vertebrae segmentation", MSKI 2017.
    """

    map_mode = "signed"

    def __init__(
        self,
        to_onehot_y: bool = False,
        reduction: str = "mean",
        ignore_index: int | None = None,
        spacing: Spacing | None = None,
        backend: str = "auto",
        compute_missing_map: bool = True,
    ) -> None:
        super().__init__(
            True, to_onehot_y, False, True, None, reduction, ignore_index, spacing, backend, compute_missing_map
        )

    @torch.no_grad()
    def contour_distance(self, prep: Prepared, signed: torch.Tensor) -> torch.Tensor:
        """:math:`E` per voxel ``(B, *spatial)``: distance to the target contour on the predicted contours, else 0."""
        logits = prep.logits
        binary = logits.shape[1] == 1
        predicted = (logits[:, 0] > 0).long() if binary else channel_argmax(logits)
        if prep.mask is not None:
            predicted = predicted.masked_fill(prep.mask[:, 0] == 0, -1)  # ignored voxels belong to no region
        contour = label_boundary(predicted, edge_is_outside=False) & (predicted == 1 if binary else predicted >= 0)
        channel = torch.zeros_like(predicted) if binary else predicted.clamp_min(0)  # the predicted class's map
        inside = prep.target.sum(prep.spatial_dims)
        has_boundary = (inside > 0) & (inside < prep.voxel_count().unsqueeze(1))
        measurable = has_boundary.gather(1, channel.flatten(1)).view_as(channel)
        return (contour & measurable) * signed.gather(1, channel.unsqueeze(1))[:, 0].abs()

    def forward(self, input: torch.Tensor, target: torch.Tensor, dist: torch.Tensor | None = None) -> torch.Tensor:
        prep = prepare_exclusive(self, input, target)
        signed = self.read_map(dist, prep, input.shape[1])
        voxel_loss = (1 + self.contour_distance(prep, signed)) * voxel_nll(prep)
        return reduce_over_voxels(voxel_loss, prep, self.reduction)


@register(
    "unet_weighted_ce",
    "extra",
    "Ronneberger, Fischer, Brox, U-Net: Convolutional Networks for Biomedical Image Segmentation, MICCAI 2015",
)
class UNetWeightedCELoss(_MapLoss):
    r"""Cross-entropy weighted by U-Net's weight map: class balance plus a border term in the gaps between objects.

    .. math:: L = \frac{1}{N} \sum_i w(i)\,\mathrm{CE}_i, \qquad
        w = w_c + w_0 \exp\!\Big(-\frac{(d_1 + d_2)^2}{2\sigma^2}\Big)

    :math:`w_c` balances the class frequencies, :math:`d_1, d_2` are the distances to the nearest and second nearest
    object (connected component of a foreground class), the border term is added on background voxels; w0 = 10 and
    σ = 5 voxels (Ronneberger et al.). The map comes from ``forward(input, target, weight=...)`` with
    ``DistanceMapd(keys="label", mode="unet_weight", num_classes=C, output_key="weight")`` ``(B, 1, *spatial)`` (a
    ``(B, C, *spatial)`` map is read at each voxel's true class). Slow path without it: computed each call with
    ``w0``, ``sigma``, ``class_balance`` and ``spacing`` (connected components and one distance transform per
    object: slow).

    Empty classes: an absent class has no voxel to weigh; with fewer than two objects the border term vanishes
    and w = :math:`w_c`. Softmax cross-entropy (one channel: binary CE with a sigmoid); ``reduction="mean"``
    averages over the voxels that take part (Ronneberger's energy is the sum: ``reduction="sum"``); ``"none"``
    returns ``(B, *spatial)``.

    Args:
        w0, sigma, class_balance: the weight map's border weight, width in voxels and class balancing, for the
            slow path (a cached map carries those of its transform).
        to_onehot_y, reduction: as :class:`~medseg.losses.CrossEntropyLoss`.
        ignore_index: label value whose voxels take no part (e.g. 255).
        spacing: voxel size for the slow path (mm; one value or one per spatial axis); ``None``: voxel units.
        backend: distance transform backend of the slow path: ``auto``, ``edt``, ``scipy``, ``sitk``, ``cucim``.
        compute_missing_map: without a map, compute it from the target (slow path); ``False``: raise ``ValueError``.

    Reference: Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
    MICCAI 2015.
    """

    map_mode = "unet_weight"
    aux_keys = ("weight",)

    def __init__(
        self,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_balance: bool = True,
        to_onehot_y: bool = False,
        reduction: str = "mean",
        ignore_index: int | None = None,
        spacing: Spacing | None = None,
        backend: str = "auto",
        compute_missing_map: bool = True,
    ) -> None:
        super().__init__(
            True, to_onehot_y, False, True, None, reduction, ignore_index, spacing, backend, compute_missing_map
        )
        if not (math.isfinite(w0) and w0 >= 0):
            raise ValueError(f"w0 must be a non-negative number, got {w0}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive number of voxels, got {sigma}")
        self.w0 = float(w0)
        self.sigma = float(sigma)
        self.class_balance = class_balance

    def forward(self, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        prep = prepare_exclusive(self, input, target)
        weight_map = self.read_map(
            weight, prep, input.shape[1], w0=self.w0, sigma=self.sigma, class_balance=self.class_balance
        )
        if weight_map.shape[1] == 1:
            voxel_weight = weight_map[:, 0]
        else:
            voxel_weight = weight_map.gather(1, prep.labels.unsqueeze(1))[:, 0]
        return reduce_over_voxels(voxel_weight * voxel_nll(prep), prep, self.reduction)
