"""Boundary losses that need more than a distance map: an extra network, extra output channels or decoder features.

- :class:`BoundaryAwareLoss` (Hayder et al.): K distance-bin channels per class instead of one mask channel, and
  :func:`decode_distance_bins` / :class:`BoundaryAwareDecoder` to turn them back into masks.
- :class:`InverseFormLoss` (Borse et al.): a frozen inverse-transformation network
  (:mod:`medseg.networks.inverseform`, trained by ``scripts/train_inverseform.py``) compares boundary maps.
- :class:`ConditionalBoundaryLoss` (Wu et al.): acts on the decoder features a network's classifier reads, which
  :class:`medseg.networks.features.FeatureHook` captures without changing the network's output.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..networks.inverseform import boundary_map, load_inverse_transform_net
from ..transforms._maps import spacing_tuple
from ..transforms.distance import distance_maps
from ._aux import checked_map
from ._prepare import SegmentationLoss, prepare, reduce
from .registry import register

__all__ = [
    "BoundaryAwareDecoder",
    "BoundaryAwareLoss",
    "ConditionalBoundaryLoss",
    "InverseFormLoss",
    "decode_distance_bins",
]

Spacing = float | Sequence[float] | None


def _check_bin_layout(input: torch.Tensor, num_bins: int) -> int:
    """Number of classes C of a ``(B, C·K, *spatial)`` bin tensor (raises for any other shape)."""
    if not isinstance(input, torch.Tensor) or input.ndim < 3 or input.shape[1] % num_bins:
        shape = tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
        raise ValueError(
            f"input must be (B, C·K, *spatial) with K={num_bins} bin channels per class (channel c·K + k − 1 is class "
            f"c, bin k), got shape {shape}"
        )
    return input.shape[1] // num_bins


def decode_distance_bins(
    bin_probs: torch.Tensor, num_bins: int = 5, truncation: float = 5.0, spacing: Spacing = None
) -> torch.Tensor:
    r"""Hayder's decoding: each class mask is the union of balls whose radius is given by the bin at each voxel.

    ``bin_probs`` ``(B, C·K, *spatial)`` (2D or 3D; the layout of :class:`BoundaryAwareLoss`): probability that
    the voxel lies in class c at distance bin k. A voxel in bin k has a distance to the outside in
    :math:`((k-1)w, kw]`, :math:`w = R/K`, so the ball of radius :math:`r_k = (k-1)w` around it lies inside
    the class; with 1 mm voxels and R = K this is Hayder's radius, the distance to the object's own contour.
    Soft version (a grey-scale dilation by those balls):

    .. math:: M_c(x) = \max_k \max_{y:\ \lVert (x - y) \odot s \rVert \le r_k} p_{c,k}(y)

    Thresholding :math:`M_c` at 0.5 is exactly the union of balls of the voxels with :math:`p_{c,k} > 0.5`, and
    exact bins (:class:`~medseg.transforms.DistanceMapd` mode ``quantized``) decode to the exact mask. Returns
    ``(B, C, *spatial)`` scores in [0, 1]: ``argmax`` over classes gives a label map (a voxel no class claims
    goes to class 0). Differentiable (a maximum over shifted maps). ``spacing``: voxel size in mm per spatial
    axis (as the bins were computed), default 1.
    """
    num_classes = _check_bin_layout(bin_probs, num_bins)
    if bin_probs.ndim not in (4, 5):
        raise ValueError(f"bin_probs must be 2D (B, C·K, H, W) or 3D (B, C·K, H, W, D), got {tuple(bin_probs.shape)}")
    spatial_ndim = bin_probs.ndim - 2
    voxel = spacing_tuple(1.0 if spacing is None else spacing, spatial_ndim)
    width = float(truncation) / num_bins
    probs = bin_probs.unflatten(1, (num_classes, num_bins))
    # an offset at distance rho is covered by every bin whose radius reaches it: the bins from j(rho) upwards
    covering = probs.flip(2).cummax(2).values.flip(2)
    largest = (num_bins - 1) * width
    reach = [math.floor(largest / s + 1e-9) for s in voxel]
    padded = F.pad(covering, [side for r in reversed(reach) for side in (r, r)])
    sizes = bin_probs.shape[2:]
    decoded = torch.zeros_like(probs[:, :, 0])
    for offset in itertools.product(*(range(-r, r + 1) for r in reach)):
        rho = math.sqrt(sum((o * s) ** 2 for o, s in zip(offset, voxel, strict=True)))
        first_bin = math.ceil(rho / width - 1e-9)  # 0-based index of the smallest bin with (k − 1)·w >= rho
        if first_bin >= num_bins:
            continue
        window = tuple(slice(r - o, r - o + n) for r, o, n in zip(reach, offset, sizes, strict=True))
        decoded = torch.maximum(decoded, padded[(slice(None), slice(None), first_bin, *window)])
    return decoded


class BoundaryAwareDecoder(nn.Module):
    """Bin logits ``(B, C·K, *spatial)`` -> class mask scores ``(B, C, *spatial)``: sigmoid, then
    :func:`decode_distance_bins`. For inference, e.g. ``sliding_window_inference(x, roi, 4, lambda x:
    decoder(net(x)))`` followed by ``argmax`` over the channels."""

    def __init__(self, num_bins: int = 5, truncation: float = 5.0, spacing: Spacing = None) -> None:
        super().__init__()
        self.num_bins = int(num_bins)
        self.truncation = float(truncation)
        self.spacing = spacing

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return decode_distance_bins(torch.sigmoid(logits), self.num_bins, self.truncation, self.spacing)


@register("boundary_aware", "boundary", "Hayder, He, Salzmann, Boundary-aware Instance Segmentation, CVPR 2017")
class BoundaryAwareLoss(SegmentationLoss):
    r"""Truncated, quantised distance to the boundary, learnt as K binary maps per class (Hayder et al.).

    Hayder et al. predict, instead of a binary mask, the distance of each pixel to the object boundary, truncated
    at R and quantised into K bins, as K binary maps each trained with a binary cross-entropy; the mask is
    decoded as the union of discs. Adapted to semantic classes: every class gets its own K maps.

    Output layout (decided here): the network has ``C·K`` output channels and no separate mask channels,
    class-major: channel ``c·K + k − 1`` is the logit of "the voxel lies in class c, in distance bin k"
    (k = 1..K). Outside class c none of its K maps is set, so their union is the class mask and C extra mask
    channels would only repeat it. :func:`decode_distance_bins` (or the module :class:`BoundaryAwareDecoder`)
    turns the bins back into masks at inference; a region loss cannot take the ``C·K`` logits directly.

    .. math::
        L = \frac{1}{N C' K} \sum_{i} \sum_{c} \sum_{k=1}^{K} \mathrm{BCE}\big(\sigma(x_{i,c,k}),\
            [D_c(i) = k]\big)

    over the N voxels that take part. :math:`D_c \in \{0..K\}`: inside class c the bin
    :math:`\lceil \min(d_{in}, R) K / R \rceil` of the distance to the nearest voxel outside it, 0 outside:
    aux ``dist`` from :class:`~medseg.transforms.DistanceMapd` (``mode="quantized"``, same ``bins`` and
    ``truncation``; all C classes), or computed on the fly from the target when ``dist`` is not given (slower:
    a distance transform per class and item each call, in voxel units unless ``spacing`` is given). A map whose
    record (:class:`~medseg.transforms.DistanceMap`) names another mode, other ``bins`` or ``truncation``, or
    another spacing than a given ``spacing`` raises ``ValueError``.

    Defaults K = 5, R = 5 (mm): the transform's defaults, one bin per millimetre, Hayder's integer distances at
    1 mm spacing. Empty class: all its bins are 0 (plain BCE pushing its K maps down); a class filling the
    patch has no boundary inside it and sits in bin K. ``reduction="none"`` returns the per-voxel terms
    ``(B, C'·K, *spatial)`` (0 at ignored voxels). Takes logits: the sigmoid is part of the loss.

    Reference: Hayder, He, Salzmann, "Boundary-aware Instance Segmentation", CVPR 2017.
    """

    aux_keys: tuple[str, ...] = ("dist",)
    map_mode = "quantized"

    def __init__(
        self,
        num_bins: int = 5,
        truncation: float = 5.0,
        spacing: Spacing = None,
        include_background: bool = True,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, False, False, False, None, reduction, ignore_index)
        if int(num_bins) != num_bins or num_bins < 1:
            raise ValueError(f"num_bins K must be a positive integer, got {num_bins}")
        if not (math.isfinite(truncation) and truncation > 0):
            raise ValueError(f"truncation R must be a positive distance, got {truncation}")
        self.num_bins = int(num_bins)
        self.truncation = float(truncation)
        self.spacing = spacing

    def _checked_bins(self, dist: torch.Tensor, batch: int, num_classes: int, spatial: torch.Size) -> torch.Tensor:
        expected = (batch, num_classes, *spatial)
        if isinstance(dist, torch.Tensor):
            params = {"bins": self.num_bins, "truncation": self.truncation}
            dist, _ = checked_map(dist, type(self).__name__, "dist", self.map_mode, self.spacing, params)
        if not isinstance(dist, torch.Tensor) or tuple(dist.shape) != expected:
            shape = tuple(dist.shape) if isinstance(dist, torch.Tensor) else type(dist).__name__
            raise ValueError(f"dist must be the quantized bin map of shape {expected} (all classes), got {shape}")
        if not _holds_bins(dist, self.num_bins):
            raise ValueError(
                f"dist holds values other than the bins 0..{self.num_bins}: build it with "
                f"DistanceMapd(mode='quantized', bins={self.num_bins}, truncation={self.truncation})"
            )
        return dist

    def forward(self, input: torch.Tensor, target: torch.Tensor, dist: torch.Tensor | None = None) -> torch.Tensor:
        num_classes = _check_bin_layout(input, self.num_bins)
        bin_logits = input.unflatten(1, (num_classes, self.num_bins))
        # bin 1 of each class stands for its class in prepare, which checks shapes and labels (SegmentationLoss's
        # __call__ looks at every bin's values when the loss is not finite)
        prep = self.prepare(bin_logits[:, :, 0], target)
        first = prep.classes[0]  # the kept classes are always the last C' (include_background drops class 0)
        logits = bin_logits[:, first:].to(prep.logits.dtype)
        if dist is None:
            levels = distance_maps(
                prep.target, "quantized", self.spacing, prep.mask, truncation=self.truncation, bins=self.num_bins
            )
        else:
            levels = self._checked_bins(dist, input.shape[0], num_classes, input.shape[2:])[:, first:]
        if self.reduction == "none":
            bins = torch.arange(1, self.num_bins + 1, device=input.device).view(1, 1, -1, *([1] * (input.ndim - 2)))
            bin_targets = (levels.unsqueeze(2) == bins).to(logits.dtype)
            terms = F.binary_cross_entropy_with_logits(logits, bin_targets, reduction="none")
            if prep.mask is not None:
                terms = terms * prep.mask.unsqueeze(2)
            return terms.flatten(1, 2)
        grad_ahead = torch.is_grad_enabled() and logits.requires_grad
        total = _BinCrossEntropySum.apply(logits, levels, prep.mask, grad_ahead)
        if self.reduction == "sum":
            return total
        return total / (prep.voxel_count().sum() * logits.shape[1] * self.num_bins).clamp_min(1)


def _holds_bins(dist: torch.Tensor, num_bins: int) -> bool:
    """Whether every value of ``dist`` is one of the integers 0..``num_bins`` (NaN is not)."""
    if dist.numel() == 0:
        return True
    low, high = torch.aminmax(dist)
    if not (low >= 0 and high <= num_bins):
        return False
    if not dist.is_floating_point():
        return True
    flat = dist.reshape(-1)
    return all(bool((part == part.round()).all()) for part in flat.split(_CHUNK))


class _BinCrossEntropySum(torch.autograd.Function):
    r""":math:`\sum_{b,c,k,x} m(x)\,\mathrm{BCE}(\sigma(z_{c,k}(x)), [D_c(x) = k])` without a ``C·K``-wide target,
    term or mask tensor.

    :math:`\mathrm{BCE}(\sigma(z), t) = \log(1 + e^z) - t z`, so the sum is the softplus of every logit minus the
    logit of each voxel's own bin (none for bin 0), and the gradient :math:`m\,(\sigma(z) - t)` is one sigmoid with
    1 subtracted at each voxel's own bin. ``logits`` ``(B, C', K, *S)``, ``levels`` ``(B, C', *S)`` bins 0..K,
    ``mask`` ``(B, 1, *S)`` or ``None``. Worked in spatial chunks of about ``_CHUNK`` logits: the temporaries stay
    small (and in cache); the gradient is the only ``C·K``-wide tensor allocated. With ``grad_ahead`` (a graph is
    being recorded) the forward also writes the gradient, chunk by chunk while its logits are in cache and with
    each chunk's own-bin indices made once; the first backward scales it in place and hands it over, a second one
    (``retain_graph``) computes it afresh.
    """

    @staticmethod
    def forward(
        ctx, logits: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor | None, grad_ahead: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(logits, levels, mask)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if grad_ahead else None
        grad_chunks = iter(()) if grad is None else _bin_chunks(grad, levels, mask)
        total = logits.new_zeros(())
        zero = logits.new_zeros(())
        buffer = None
        for x, level, known in _bin_chunks(logits, levels, mask):
            if buffer is None:
                buffer = torch.empty_like(x, memory_format=torch.contiguous_format)
            own, has_bin = _own_bin(level, x.dtype)
            softplus = torch.logaddexp(x, zero, out=buffer[..., : x.shape[-1]])  # log(1 + e^z), one buffer reused
            per_voxel = softplus.sum(1).sub_(x.gather(1, own).squeeze(1).mul_(has_bin)).sum(0)
            total += per_voxel.sum() if known is None else per_voxel.dot(known[0])
            if grad is not None:
                g = torch.sigmoid(x, out=next(grad_chunks)[0])
                g.scatter_add_(1, own, has_bin.neg_().unsqueeze(1))
                if known is not None:
                    g.mul_(known.unsqueeze(1))
        ctx.grad = grad
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        grad, ctx.grad = ctx.grad, None
        if grad is not None:
            return grad.mul_(grad_output), None, None, None
        logits, levels, mask = ctx.saved_tensors
        grad = torch.sigmoid(logits)
        for g, level, known in _bin_chunks(grad, levels, mask):
            own, has_bin = _own_bin(level, g.dtype)
            g.scatter_add_(1, own, has_bin.neg_().unsqueeze(1))
            g.mul_(grad_output if known is None else grad_output * known.unsqueeze(1))
        return grad, None, None, None


_CHUNK = 1 << 18


def _bin_chunks(
    bins: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``(C', K, s)`` views of ``bins`` ``(B, C', K, *S)`` with their ``(C', s)`` levels and ``(1, s)`` mask (or
    ``None``), chunk by chunk over the batch and the flattened space."""
    flat_bins, flat_levels = bins.flatten(3), levels.flatten(2)
    flat_mask = None if mask is None else mask.flatten(2)
    step = max(1, _CHUNK // (bins.shape[1] * bins.shape[2]))
    for b in range(bins.shape[0]):
        for start in range(0, flat_bins.shape[-1], step):
            part = slice(start, start + step)
            known = None if flat_mask is None else flat_mask[b, :, part]
            yield flat_bins[b, :, :, part], flat_levels[b, :, part], known


def _own_bin(level: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Index ``(C', 1, s)`` of each voxel's own bin channel (0 for bin 0) and ``(C', s)`` 1 where it has one."""
    return level.long().sub_(1).clamp_min_(0).unsqueeze(1), level.clamp_max(1).to(dtype)  # bins are integers >= 0


def _planes(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` or ``(B, C, H, W, D)`` -> ``(B·C·D, 1, H, W)``: 2D slices along the last axis."""
    if x.ndim == 5:
        x = x.movedim(-1, 2)
    return x.reshape(-1, 1, *x.shape[-2:])


def _tiles(planes: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 1, H, W)`` -> ``(N·h·w, 1, size, size)``, zero-padded at the bottom and right to whole tiles."""
    height, width = planes.shape[-2:]
    padded = F.pad(planes, (0, (-width) % size, 0, (-height) % size))
    tiles = padded.unfold(2, size, size).unfold(3, size, size)  # (N, 1, h, w, size, size)
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 1, size, size)


@register("inverse_form", "boundary", "Borse, Wang, Zhang, Porikli, InverseForm, CVPR 2021")
class InverseFormLoss(SegmentationLoss):
    r"""Distance from the identity of the transform a frozen network finds between predicted and target boundaries.

    Borse et al. train an inverse-transformation network to regress the transform :math:`\hat\theta` (3×3)
    between two boundary maps, freeze it, and penalise a segmentation by how far the transform between its
    boundary and the ground truth's is from the identity. Per class c, 2D slice and tile t:

    .. math::
        L = \operatorname{mean}_{b, c}\ \operatorname{mean}_{t}
            \big\lVert \hat\theta(e_{b,c,t}, \hat e_{b,c,t}) - \hat\theta(\hat e_{b,c,t}, \hat e_{b,c,t}) \big\rVert_F

    :math:`e` is the predicted boundary map, the morphological gradient (3×3 max minus min) of the class
    probabilities, a probability in [0, 1] (the activation flags as MONAI's: ``sigmoid``, ``softmax`` or
    ``other_act``; the authors' code applies ``log_softmax`` to a one-channel edge map, which is identically 0);
    :math:`\hat e` the same map of the one-hot target. Maps are cut into the network's square tiles
    (zero-padded to whole tiles), as the authors tile their resized images.

    ``calibrate=True`` (default) measures the distance to the network's answer for two identical maps instead of
    the identity :math:`I` (the paper's :math:`\lVert\hat\theta - I\rVert_F`, ``calibrate=False``): the same for a
    perfect network, but a trained one is not, and calibrated the loss is exactly 0 when the two boundary maps
    are equal, so that its minimum lies at a perfect prediction. Euclidean (Frobenius) distance, as the authors'
    code; the paper's geodesic variant is not provided. The tile size is the checkpoint's (64 from the script);
    the 3×3 window gives the thinnest two-sided boundary band.

    2D transforms only: a 3D input is treated slice by slice along its last spatial axis (in-plane boundaries
    and in-plane transforms); a 3D (4×4) inverse network is not provided. An absent class has two empty maps:
    0 when calibrated. ``reduction="none"`` gives ``(B, C', 1, ...)``.

    Args:
        checkpoint: path of an inverse-transformation network written by ``scripts/train_inverseform.py``
            (:func:`medseg.networks.inverseform.load_inverse_transform_net`); a missing file raises
            ``FileNotFoundError``, an unreadable or foreign one ``ValueError``, both naming the path.
        calibrate: subtract the network's answer for identical maps (see above).
        Others: MONAI's common arguments.

    Reference: Borse, Wang, Zhang, Porikli, "InverseForm: A Loss Function for Structured Boundary-Aware
    Segmentation", CVPR 2021.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reduction: str = "mean",
        calibrate: bool = True,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, ignore_index)
        self.inverse_net = load_inverse_transform_net(checkpoint)
        self.calibrate = calibrate

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = self.prepare(input, target)
        if input.ndim not in (4, 5):
            raise ValueError(f"input must be 2D (B, C, H, W) or 3D (B, C, H, W, D), got shape {tuple(input.shape)}")
        probs, onehot = prep.probs, prep.target
        known = None if prep.mask is None else _planes((prep.mask > 0).expand_as(probs))
        predicted = _tiles(boundary_map(_planes(probs), known), self.inverse_net.tile_size)
        expected = _tiles(boundary_map(_planes(onehot), known), self.inverse_net.tile_size)
        net_dtype = next(self.inverse_net.parameters()).dtype
        predicted, expected = predicted.to(net_dtype), expected.to(net_dtype)
        with torch.autocast(input.device.type, enabled=False):
            theta = self.inverse_net(predicted, expected)
            if self.calibrate:
                with torch.no_grad():
                    reference = self.inverse_net(expected, expected)
            else:
                reference = torch.eye(3, dtype=net_dtype, device=input.device)
            distance = torch.linalg.matrix_norm(theta - reference)
        per_class = distance.to(prep.logits.dtype).view(*probs.shape[:2], -1).mean(-1)
        return reduce(per_class, self.reduction, input.ndim - 2)


def _window_extreme(x: torch.Tensor, width: int, extreme: Callable, fill: int) -> torch.Tensor:
    """Largest (``torch.maximum``) or smallest (``torch.minimum``) value of ``x`` ``(B, *S)`` within the chessboard
    radius ``width`` of each voxel (outside the grid: ``fill``): per axis, windows of doubling length, then two
    overlapping ones (about log2(2w + 1) + 1 elementwise passes per axis)."""
    window = 2 * width + 1
    for axis in range(1, x.ndim):
        size = x.shape[axis]
        pad = [0, 0] * (x.ndim - 1 - axis) + [width, width]
        current, span = F.pad(x, pad, value=fill), 1
        while 2 * span <= window:
            length = current.shape[axis] - span
            current = extreme(current.narrow(axis, 0, length), current.narrow(axis, span, length))
            span *= 2
        x = extreme(current.narrow(axis, 0, size), current.narrow(axis, window - span, size))
    return x


_PAIR_BLOCK = 1 << 13


class _FlatWindow:
    r"""The ``(2r + 1)``-wide window of a ``(B, *S)`` grid as shifts of one flat axis.

    A map ``(B, Ch, *S)`` is padded by r on every side and flattened to ``(Ch, P)`` (batch and space together):
    the neighbour of position p at offset o is then position :math:`p + \delta_o`, with
    :math:`\delta_o = \sum_d o_d\,\mathrm{stride}_d` of the padded grid, and every window stays inside its own
    image. Each unordered pair of window neighbours appears once, as ``(p, p + delta)`` for the offsets with
    ``delta > 0``; every voxel of the grid lies in ``[start, stop)``.
    """

    def __init__(self, spatial: Sequence[int], radius: int) -> None:
        self.spatial = tuple(spatial)
        self.radius = radius
        self.padded = tuple(n + 2 * radius for n in spatial)
        strides = [math.prod(self.padded[d + 1 :]) for d in range(len(spatial))]
        offsets = itertools.product(range(-radius, radius + 1), repeat=len(spatial))
        deltas = (sum(o * s for o, s in zip(offset, strides, strict=True)) for offset in offsets)
        self.deltas = tuple(d for d in deltas if d > 0)
        self.start = radius * sum(strides)
        self.size = math.prod(self.padded)
        self.inside = tuple(slice(radius, radius + n) for n in spatial)

    def pair_slices(self, length: int, block: int) -> Iterator[tuple[slice, slice]]:
        """The pairs ``(p, p + delta)`` (``delta > 0``) with an end in ``[start, length - start)``, as the slices of
        their two ends: block by block of ``block`` first ends, every offset within a block (the block's
        rows stay in cache)."""
        stop = length - self.start
        for first in range(0, stop, block):
            for delta in self.deltas:
                low, high = max(first, self.start - delta), min(first + block, stop)
                if low < high:
                    yield slice(low, high), slice(low + delta, high + delta)

    def flatten(self, x: torch.Tensor, value: float = 0) -> torch.Tensor:
        """``(B, Ch, *S)`` -> padded ``(Ch, P)``."""
        padded = F.pad(x, [self.radius] * (2 * len(self.spatial)), value=value)
        return padded.movedim(1, 0).reshape(x.shape[1], -1)

    def unflatten(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """``(Ch, P)`` -> ``(B, Ch, *S)``, the padding cut off."""
        return x.view(x.shape[0], batch, *self.padded).movedim(0, 1)[(slice(None), slice(None), *self.inside)]


class _WindowSums(torch.autograd.Function):
    r"""Sums over the window neighbours j of every position i (flat layout of :class:`_FlatWindow`), for the
    conditional boundary loss, with :math:`s_{ij} = [y_i = y_j]`, :math:`\kappa_j` (neighbour correctly
    classified) and unit features :math:`u`:

    - ``pairs`` ``(2, P)``: :math:`\sum_j \kappa_j (u_i \cdot u_j - s_{ij})^2` (differentiable in :math:`u`) and
      :math:`\sum_j \kappa_j`;
    - ``sums`` ``(C + F + 2, P)``: :math:`\sum_j s_{ij} x_j` of the stack :math:`x = (z, \kappa f, 1, \kappa)`:
      the same-class logit sum (differentiable in :math:`z`), the correct same-class feature sum (a target, no
      gradient to :math:`f`) and the two counts, in one pass per offset.

    Each unordered pair is visited once and feeds both ends (:math:`u_i \cdot u_j` and :math:`s_{ij}` are
    symmetric). Per offset only the cosines and :math:`s` (one value and one bool per position) are kept for the
    backward pass:
    :math:`\partial/\partial u_i = \sum_j 2 (u_i \cdot u_j - s_{ij})(g_i \kappa_j + g_j \kappa_i)\, u_j` and
    :math:`\partial/\partial z_j = \sum_i s_{ij} G_i`.
    """

    @staticmethod
    def forward(ctx, unit, logits, labels, correct, features, window):
        # the stack x = (z, κf, 1, κ), written straight into the flat padded layout (C + F + 2, P)
        num_classes, num_features = logits.shape[1], features.shape[1]
        dtype = torch.promote_types(logits.dtype, features.dtype)
        grid = logits.new_zeros(num_classes + num_features + 2, logits.shape[0], *window.padded, dtype=dtype)
        inside = grid[(slice(None), slice(None), *window.inside)]
        inside[:num_classes] = logits.movedim(1, 0)
        inside[num_classes : num_classes + num_features] = features.movedim(1, 0)
        inside[num_classes : num_classes + num_features] *= correct
        inside[-2] = 1
        inside[-1] = correct
        stacked = grid.view(grid.shape[0], -1)
        correct = stacked[-1].to(unit.dtype, copy=True)  # not a view: the stack is not kept for backward
        sums = torch.zeros_like(stacked)
        pairs = correct.new_zeros(2, correct.shape[0])
        keep = any(ctx.needs_input_grad[:2])
        ctx.pairs = []
        # CPU: blocks that stay in cache; an accelerator: one block (fewer, larger kernels)
        block = _PAIR_BLOCK if unit.device.type == "cpu" else correct.shape[0]
        for head, tail in window.pair_slices(correct.shape[0], block):
            is_same = labels[head] == labels[tail]
            same = is_same.to(dtype)
            cosine = (unit[:, head] * unit[:, tail]).sum(0)
            sums[:, head].addcmul_(stacked[:, tail], same)
            sums[:, tail].addcmul_(stacked[:, head], same)
            error = (cosine - same).square_()
            pairs[0, head].addcmul_(correct[tail], error)
            pairs[0, tail].addcmul_(correct[head], error)
            pairs[1, head] += correct[tail]
            pairs[1, tail] += correct[head]
            if keep:
                ctx.pairs.append((head, tail, is_same, cosine))
        ctx.save_for_backward(unit, correct)
        ctx.num_classes, ctx.window = num_classes, window
        return pairs, sums.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_pairs, grad_sums):
        unit, correct = ctx.saved_tensors
        grad_error, grad_class = grad_pairs[0], grad_sums[: ctx.num_classes]
        grad_unit, grad_logits = torch.zeros_like(unit), torch.zeros_like(grad_class)
        for head, tail, is_same, cosine in ctx.pairs:
            same = is_same.to(cosine.dtype)
            weight = (cosine - same).mul_(2) * (grad_error[head] * correct[tail] + grad_error[tail] * correct[head])
            grad_unit[:, head].addcmul_(unit[:, tail], weight)
            grad_unit[:, tail].addcmul_(unit[:, head], weight)
            grad_logits[:, tail].addcmul_(grad_class[:, head], same)
            grad_logits[:, head].addcmul_(grad_class[:, tail], same)
        return (
            grad_unit,
            ctx.window.unflatten(grad_logits, grad_logits.shape[1] // ctx.window.size),
            None,
            None,
            None,
            None,
        )


def _to_feature_grid(
    logits: torch.Tensor, labels: torch.Tensor, known: torch.Tensor, grid: torch.Size
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, labels and known voxels on a grid coarser by an integer factor per axis (the features' grid).

    Labels and known voxels are subsampled (the first voxel of each block, nearest-neighbour as the authors
    downsample their labels); logits are averaged over the known voxels of each block.
    """
    sizes = labels.shape[1:]
    factors = [n // m if m and n % m == 0 else 0 for n, m in zip(sizes, grid, strict=True)]
    if not all(factors):
        raise ValueError(
            f"features grid {tuple(grid)} must divide the input's spatial size {tuple(sizes)} by an integer per axis"
        )
    if all(f == 1 for f in factors):
        return logits, labels, known
    first = (slice(None), *(slice(None, None, f) for f in factors))
    pool = F.avg_pool2d if len(factors) == 2 else F.avg_pool3d
    weight = known.unsqueeze(1).to(logits.dtype)
    block_mean = pool(logits * weight, factors, factors) / pool(weight, factors, factors).clamp_min(1e-12)
    return block_mean, labels[first], known[first]


@register(
    "conditional_boundary", "boundary", "Wu et al., Conditional Boundary Loss for Semantic Segmentation, IEEE TIP 2023"
)
class ConditionalBoundaryLoss(SegmentationLoss):
    r"""Feature-level boundary loss: boundary voxels pulled to their local class centre and to correctly classified
    same-class neighbours, pushed from correctly classified other-class neighbours (Wu et al.).

    Anchors :math:`\mathcal{B}`: ground-truth boundary voxels, those with a voxel of another class within the
    chessboard radius :math:`w = \max(1, \mathrm{round}(0.02 \cdot \text{grid diagonal}))` (the authors'
    boundary-IoU band; the patch border is no boundary). For an anchor i, :math:`N(i)` is its ``kernel_size``
    window (5×5 or 5×5×5 without i, the authors' extractor), :math:`\kappa_j` says j is correctly classified
    (argmax of the logits equals its label), :math:`f` are the decoder features (aux ``features``),
    :math:`z` the logits. Three terms per anchor:

    - A2C, distance (weight :math:`\lambda_d`): :math:`\lVert f_i - \bar f_i \rVert^2 / F` with
      :math:`\bar f_i` the mean feature of the correctly classified same-class neighbours (detached: a target);
    - A2C, classification (weight :math:`\lambda_k`): :math:`\mathrm{CE}(\bar z_i, y_i)`, the local class centre
      (mean over all same-class neighbours) classified as the anchor's class;
    - A2P&N (weight :math:`\lambda_p`): :math:`\operatorname{mean}_{j \in N(i),\, \kappa_j}
      (\cos(f_i, f_j) - [y_j = y_i])^2` over the correctly classified neighbours (the conditional,
      correctness-aware sampling): same class pulled to cosine 1, other classes pushed to 0.

    Each term is averaged over the anchors of a class (pairs, for A2P&N) in the whole batch; an anchor without
    such neighbours takes no part in that term. :math:`L_c = \lambda_p P_c + \lambda_k K_c + \lambda_d D_c`, and
    ``reduction="mean"`` averages :math:`L_c` over the classes with at least one anchor (``"sum"`` sums,
    ``"none"`` returns ``(C',)`` with 0 for classes without anchors). A class without boundary voxels (absent
    or filling the patch) contributes nothing; with no anchor at all the loss is 0. ``include_background=False``
    takes no anchors from class 0 (its voxels remain neighbours).

    Classifier weights are not needed: the authors classify the mean neighbour feature with the network's
    1×1 classifier, and for a linear classifier :math:`W \bar f + b` is the mean of the neighbours' logits
    :math:`\bar z`, which is what this loss reads (for a k×k head, as TransUNet's, the mean logit is the natural
    counterpart). ``features`` ``(B, F, *S_f)`` may lie on a grid coarser by an integer factor per axis (MONAI's
    ``UNet`` exposes its last decoder features at half resolution): the labels are then subsampled and the
    logits averaged over each block, and the loss is computed on that grid. Use
    :class:`medseg.networks.features.FeatureHook` to capture them.

    Defaults: ``kernel_size=5``, ``boundary_ratio=0.02``, :math:`\lambda_p = 1`, :math:`\lambda_k = 0.2`,
    :math:`\lambda_d = 2` (the authors' OCRNet head: ``loss_context``, ``loss_NCE``, ``loss_CN``). Differences
    from the authors' code, following the paper: every boundary anchor is pulled to its centre (the code
    pulls only correctly classified ones) and A2P&N samples only correctly classified neighbours (the code
    takes all); anchors of class 0 count unless ``include_background=False`` (the code drops class 0).
    Takes logits (softmax classes, at least two channels). NaN or inf in the logits or the features raise
    ``ValueError`` (checked before every call: they can lie outside every anchor's window), as does a call without
    ``features``.

    Reference: Wu et al., "Conditional Boundary Loss for Semantic Segmentation", IEEE Transactions on Image
    Processing 32, 2023.
    """

    aux_keys: tuple[str, ...] = ("features",)
    nan_propagates = False  # NaN/inf logits away from every anchor's window leave the loss finite

    def __init__(
        self,
        kernel_size: int = 5,
        boundary_ratio: float = 0.02,
        pair_weight: float = 1.0,
        centre_class_weight: float = 0.2,
        centre_distance_weight: float = 2.0,
        include_background: bool = True,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, False, False, True, None, reduction, ignore_index)
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size}")
        if not 0.0 <= boundary_ratio < 1.0:
            raise ValueError(f"boundary_ratio must be in [0, 1), got {boundary_ratio}")
        weights = {
            "pair_weight": pair_weight,
            "centre_class_weight": centre_class_weight,
            "centre_distance_weight": centre_distance_weight,
        }
        for name, value in weights.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        self.kernel_size = int(kernel_size)
        self.boundary_ratio = float(boundary_ratio)
        self.pair_weight = float(pair_weight)
        self.centre_class_weight = float(centre_class_weight)
        self.centre_distance_weight = float(centre_distance_weight)

    def _checked_features(self, features: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
        if (
            not isinstance(features, torch.Tensor)
            or not features.is_floating_point()
            or features.ndim != input.ndim
            or features.shape[0] != input.shape[0]
        ):
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(
                f"features must be floating point decoder features (B, F, *spatial) for input shape "
                f"{tuple(input.shape)}, got {shape}"
            )
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or inf values; the loss would be undefined")
        return features.to(torch.promote_types(features.dtype, torch.float32))

    def boundary_anchors(self, labels: torch.Tensor, known: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Known voxels with a known voxel of another class within the chessboard radius w ``(B, *S)`` bool."""
        spatial = labels.shape[1:]
        width = max(1, round(self.boundary_ratio * math.sqrt(sum(n * n for n in spatial))))
        # another known class within the window <=> the largest or the smallest known label there is not y_i
        highest = _window_extreme(torch.where(known, labels, -1), width, torch.maximum, -1)
        lowest = _window_extreme(torch.where(known, labels, num_classes), width, torch.minimum, num_classes)
        return known & ((highest != labels) | (lowest != labels))

    def forward(self, input: torch.Tensor, target: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if features is None:
            raise ValueError(
                "ConditionalBoundaryLoss needs the decoder features: call loss(logits, labels, features=...) with "
                "the features the network's classifier reads, captured by medseg.networks.features.FeatureHook "
                "(with FeatureHook(net) as hook: loss(net(x), y, **hook.aux())); in a SupervisedTrainer wrap the "
                "loss in HookedFeaturesLoss(loss, FeatureHook(net).attach())"
            )
        if isinstance(input, torch.Tensor) and input.ndim > 1 and input.shape[1] < 2:
            raise ValueError(
                f"conditional_boundary needs at least two class channels (softmax), got shape {tuple(input.shape)}"
            )
        prep = prepare(input, target, softmax=True, ignore_index=self.ignore_index)
        if input.ndim not in (4, 5):
            raise ValueError(f"input must be 2D (B, C, H, W) or 3D (B, C, H, W, D), got shape {tuple(input.shape)}")
        num_classes = input.shape[1]
        features = self._checked_features(features, input)
        known = torch.ones_like(prep.labels, dtype=torch.bool) if prep.mask is None else prep.mask[:, 0] > 0
        logits, labels, known = _to_feature_grid(prep.logits, prep.labels, known, features.shape[2:])
        labels = torch.where(known, labels, -1)  # unknown voxels match no class
        correct = (logits.detach().max(1).indices == labels) & known  # the first largest, as argmax (faster)
        anchors = self.boundary_anchors(labels, known, num_classes)
        if not self.include_background:
            anchors = anchors & (labels != 0)

        spatial = labels.shape[1:]
        # 1 / |f| with |f| clamped at 1e-12, from the clamped squared norm (as norm, and 10x faster on dim 1)
        unit = features * features.square().sum(1, keepdim=True).clamp_min(1e-24).rsqrt()
        window = _FlatWindow(spatial, self.kernel_size // 2)
        pairs, sums = _WindowSums.apply(
            window.flatten(unit),
            logits,
            window.flatten(labels.unsqueeze(1), -1)[0],
            correct,
            features.detach(),
            window,
        )
        pair_error, pair_count = window.unflatten(pairs, labels.shape[0]).unbind(1)
        sums = window.unflatten(sums, labels.shape[0])
        class_logit_sum, correct_sum, same_count, correct_count = sums.split([num_classes, features.shape[1], 1, 1], 1)
        same_count, correct_count = same_count[:, 0], correct_count[:, 0]

        # divisions by counts as products with their reciprocals (one division per voxel, not per channel)
        centre = (correct_sum * correct_count.clamp_min(1).reciprocal().unsqueeze(1)).detach()
        distance_term = (features - centre).square().sum(1) / features.shape[1]
        class_centre = class_logit_sum * same_count.clamp_min(1).reciprocal().unsqueeze(1)
        class_term = F.cross_entropy(class_centre, labels.clamp_min(0), reduction="none")

        # per-class sums over the anchors: one index_add over the voxels (non-anchors go to an extra bin C)
        anchor_class = torch.where(anchors, labels, num_classes).flatten()
        kept = torch.tensor(prep.classes, device=input.device)

        def class_sum(values: torch.Tensor) -> torch.Tensor:
            bins = values.new_zeros(num_classes + 1).index_add_(0, anchor_class, values.flatten())
            return bins[kept]

        def class_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            return class_sum(torch.where(weights > 0, values * weights, 0.0)) / class_sum(weights).clamp_min(1e-12)

        per_class = (
            self.pair_weight * class_mean(pair_error / pair_count.clamp_min(1), pair_count)
            + self.centre_class_weight * class_mean(class_term, (same_count > 0).to(features.dtype))
            + self.centre_distance_weight * class_mean(distance_term, (correct_count > 0).to(features.dtype))
        )
        if self.reduction == "none":
            return per_class
        if self.reduction == "sum":
            return per_class.sum()
        has_anchor = class_sum(torch.ones_like(pair_count)) > 0
        return per_class.sum() / has_anchor.sum().clamp_min(1)
