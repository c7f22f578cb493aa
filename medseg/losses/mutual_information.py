"""Region mutual information loss: BCE plus a lower bound of the mutual information of R×R(×R) neighbourhoods."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch.nn import functional

from ._prepare import SegmentationLoss, reduce
from .registry import register

__all__ = ["RegionMutualInformationLoss", "neighbourhood_vectors"]

POOL_MODES = ("avg", "max")


def neighbourhood_vectors(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Each voxel's ``radius``-wide cube of neighbours as a vector: ``(B, C, *spatial)`` -> ``(B, C, R^d, M)``.

    Only positions whose whole neighbourhood lies inside the map are used (no padding), so
    ``M = prod(size - radius + 1)``; the offsets run in C order (last spatial dim fastest). One copy, from
    ``unfold`` views.
    """
    ndim = x.ndim - 2
    windows = x
    for dim in range(2, x.ndim):
        windows = windows.unfold(dim, radius, 1)  # (B, C, *valid, R, ..., R)
    order = [0, 1, *range(2 + ndim, 2 + 2 * ndim), *range(2, 2 + ndim)]
    return windows.permute(order).reshape(*x.shape[:2], radius**ndim, -1)


def _fold_neighbourhoods(vectors: torch.Tensor, shape: torch.Size, radius: int) -> torch.Tensor:
    """The adjoint of :func:`neighbourhood_vectors`, ``(B, C, R^d, M)`` -> ``shape`` = ``(B, C, *spatial)``: each
    entry is added back at the voxel it was read from (R^d shifted adds)."""
    valid = [size - radius + 1 for size in shape[2:]]
    grid = vectors.unflatten(3, valid)
    out = vectors.new_zeros(shape)
    for i, offset in enumerate(itertools.product(range(radius), repeat=len(valid))):
        out[(slice(None), slice(None), *(slice(o, o + n) for o, n in zip(offset, valid, strict=True)))] += grid[:, :, i]
    return out


def _pairs(labels: torch.Tensor, probs: torch.Tensor, radius: int) -> torch.Tensor:
    """The neighbourhood vectors of the labels and the probabilities stacked, :math:`Z = [Y; P]` ``(B, C, 2D, M)``
    (the authors' ``map_get_pairs``): D label rows, then D probability rows, each map shifted by its mean (which
    the centring removes again: it only keeps the numbers small)."""
    joint = torch.stack([labels, probs], 2)  # (B, C, 2, *spatial)
    joint = joint - joint.mean(list(range(3, joint.ndim)), keepdim=True)
    pairs = neighbourhood_vectors(joint.flatten(1, 2), radius)  # (B, C 2, D, M)
    return pairs.reshape(*probs.shape[:2], -1, pairs.shape[-1])


class _JointCovariance(torch.autograd.Function):
    r"""The joint covariance ``(B, C, 2D, 2D)`` of the centred vectors :math:`\tilde Z = Z - \bar Z` of
    :math:`Z = [Y; P]` (:func:`_pairs`): :math:`\tilde Z \tilde Z^T = Z Z^T - M \bar z \bar z^T`, one ``bmm``; its
    blocks are :math:`\Sigma_Y`, :math:`\Sigma_{YP}` and :math:`\Sigma_P`.

    Backward goes to the probabilities only (the labels take no gradient): :math:`\partial L / \partial P =
    [(G + G^T) \tilde Z]_{P\ \mathrm{rows}} = A Z - A \bar z \mathbf{1}^T` with :math:`A` those rows of
    :math:`G + G^T`, one ``baddbmm`` of ``(D, 2D)`` by ``(2D, M)``, folded back onto the map. Under ``create_graph``
    the gradient is taken through the tracked ops instead, so higher derivatives stay exact.
    """

    @staticmethod
    def forward(ctx: Any, labels: torch.Tensor, probs: torch.Tensor, radius: int) -> torch.Tensor:
        pairs = _pairs(labels, probs, radius)
        mean = pairs.mean(-1, keepdim=True)
        ctx.save_for_backward(pairs, mean, labels, probs)
        ctx.radius = radius
        return pairs @ pairs.transpose(-1, -2) - pairs.shape[-1] * (mean @ mean.transpose(-1, -2))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pairs, mean, labels, probs = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph
            tracked = _pairs(labels.detach(), probs, ctx.radius)
            tracked = tracked - tracked.mean(-1, keepdim=True)
            (grad_probs,) = torch.autograd.grad(tracked @ tracked.transpose(-1, -2), probs, grad, create_graph=True)
            return None, grad_probs, None
        dim = pairs.shape[2] // 2
        rows = grad[..., dim:, :] + grad[..., :, dim:].transpose(-1, -2)
        batch = pairs.shape[:2]
        grad_vectors = torch.baddbmm(-(rows @ mean).flatten(0, 1), rows.flatten(0, 1), pairs.flatten(0, 1)).view(
            *batch, dim, -1
        )
        return None, _fold_neighbourhoods(grad_vectors, probs.shape, ctx.radius), None


class _SigmoidBCE(torch.autograd.Function):
    r"""The masked probabilities :math:`m\,\sigma(x)` and the per-image, per-class BCE sums
    :math:`\sum_i m_i\,\mathrm{BCE}(x_i, t_i)` ``(B, C)`` of binary targets ``t`` (zero where ``m`` is), in three
    passes over the logits: :math:`\sigma(x)`; :math:`\pm x` (the sign flipped where :math:`t = 1`, exactly); and
    :math:`\mathrm{softplus}(\pm x)`, which is :math:`-\log\sigma(x)` where :math:`t = 1` and
    :math:`-\log(1 - \sigma(x))` where :math:`t = 0`, each to the last bit (no cancellation).

    The target is a :class:`_Target`: a one-hot tensor, or a label map read by ``gather``/``scatter`` (no one-hot
    tensor at full resolution). Backward in two passes, from the saved :math:`q = m\,\sigma(x)`: with :math:`\bar q`
    the gradient of the probabilities and :math:`\bar b` that of the sums,
    :math:`\partial L / \partial x = \bar q\,q(1 - q) + \bar b\,(q - t)` (for 0/1 masks
    :math:`q(1-q) = m\,\sigma(1-\sigma)`). Under ``create_graph`` the tracked ops run instead.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        onehot: torch.Tensor | None,
        index: torch.Tensor | None,
        keep: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        target = _Target(onehot, index, keep)
        probs, bce = _sigmoid_bce(logits, target, mask)
        ctx.save_for_backward(probs, onehot, index, keep, logits, mask)
        return probs, bce

    @staticmethod
    def backward(ctx: Any, grad_probs: torch.Tensor | None, grad_bce: torch.Tensor | None) -> tuple[Any, ...]:
        probs, onehot, index, keep, logits, mask = ctx.saved_tensors
        target = _Target(onehot, index, keep)
        if torch.is_grad_enabled():  # create_graph
            outputs = _sigmoid_bce(logits, target, mask, tracked=True)
            used = [(o, g) for o, g in zip(outputs, (grad_probs, grad_bce), strict=True) if g is not None]
            (grad,) = torch.autograd.grad([o for o, _ in used], logits, [g for _, g in used], create_graph=True)
            return grad, None, None, None, None
        grad = torch.zeros_like(probs) if grad_probs is None else torch.ops.aten.sigmoid_backward(grad_probs, probs)
        if grad_bce is not None:
            weight = grad_bce.view(*grad_bce.shape, *[1] * (probs.ndim - 2))
            target.subtract_from(grad.addcmul_(probs, weight), weight)
        return grad, None, None, None, None


class _Target:
    """A binary ``(B, C, *spatial)`` target: ``onehot``, or ``index`` ``(B, 1, *spatial)``, each voxel's channel,
    with ``keep`` (float 0/1, or ``None`` for all) marking the voxels whose channel is one of the C (and not
    ignored)."""

    def __init__(self, onehot: torch.Tensor | None, index: torch.Tensor | None, keep: torch.Tensor | None) -> None:
        self.onehot, self.index, self.keep = onehot, index, keep

    def signed(self, logits: torch.Tensor) -> torch.Tensor:
        """:math:`x - 2xt`: :math:`-x` where :math:`t = 1`, :math:`x` elsewhere (exact)."""
        if self.onehot is not None:
            return torch.addcmul(logits, logits, self.onehot, value=-2.0)
        at = logits.gather(1, self.index)
        return logits.scatter(1, self.index, -at if self.keep is None else torch.addcmul(at, at, self.keep, value=-2.0))

    def subtract_from(self, grad: torch.Tensor, weight: torch.Tensor) -> None:
        """``grad -= weight * t`` in place (``weight`` broadcasts as ``(B, C, 1, ...)``)."""
        if self.onehot is not None:
            grad.addcmul_(self.onehot, weight, value=-1.0)
            return
        per_voxel = weight.flatten(1).gather(1, self.index.flatten(1)).view_as(self.index)
        grad.scatter_add_(1, self.index, -per_voxel if self.keep is None else -per_voxel * self.keep)


def _sigmoid_bce(
    logits: torch.Tensor, target: _Target, mask: torch.Tensor | None, tracked: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`_SigmoidBCE`'s outputs; ``tracked``: out-of-place ops only (autograd can differentiate them)."""
    probs = torch.sigmoid(logits)
    voxel_bce = functional.softplus(target.signed(logits), threshold=40.0)  # log1p(exp(·)) to 40: exact in f32/f64
    if mask is not None:
        probs = probs * mask if tracked else probs.mul_(mask)
        voxel_bce = voxel_bce * mask if tracked else voxel_bce.mul_(mask)
    return probs, voxel_bce.flatten(2).sum(-1)


def _label_index(
    labels: torch.Tensor, mask: torch.Tensor | None, offset: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B, 1, *spatial)`` channel of each voxel's label (``labels - offset``, clamped at 0) and its ``keep``: float
    1 where that channel exists (label ``>= offset``) and the voxel is not ignored, ``None`` when that is all."""
    index = labels.unsqueeze(1) - offset if offset else labels.unsqueeze(1)
    keep = None
    if offset:
        keep = index >= 0
        index = index.clamp_min(0)
    if mask is not None:
        keep = mask > 0 if keep is None else keep & (mask > 0)
    return index, None if keep is None else keep.to(dtype)


def _pooled_one_hot(
    index: torch.Tensor, keep: torch.Tensor | None, channels: int, size: int, mode: str, dtype: torch.dtype
) -> torch.Tensor:
    """``{avg,max}_pool`` (kernel = stride = ``size``, zero padding ``size // 2``) of the one-hot target of a label
    ``index`` (:func:`_label_index`), ``(B, C, *pooled)``, by counting each pooling window's voxels per channel
    (a ``scatter_add`` over the ``B × N`` labels instead of a pass over ``B × C × N``): the average is the count
    over ``size^d`` (the same division as ``avg_pool``), the max whether the count is positive."""
    spatial = index.shape[2:]
    pad = size // 2
    pooled = [(n + 2 * pad - size) // size + 1 for n in spatial]
    window = torch.zeros((), dtype=torch.long, device=index.device)
    inside = torch.ones((), dtype=torch.bool, device=index.device)
    for dim, (n, m) in enumerate(zip(spatial, pooled, strict=True)):
        shape = [1] * len(spatial)
        shape[dim] = n
        bins = ((torch.arange(n, device=index.device) + pad) // size).view(shape)
        window = window * m + bins
        inside = inside & (bins < m)  # the last voxels of a dim can fall outside every window
    window = torch.where(inside, window, 0)
    cells = math.prod(pooled)
    counts = torch.zeros(index.shape[0], channels * cells, dtype=dtype, device=index.device)
    weight = inside.to(dtype).expand(spatial) if keep is None else keep[:, 0] * inside
    counts.scatter_add_(
        1, (index[:, 0] * cells + window).flatten(1), weight.expand(index.shape[0], *spatial).flatten(1)
    )
    counts = counts.view(index.shape[0], channels, *pooled)
    return counts / size ** len(spatial) if mode == "avg" else (counts > 0).to(dtype)


def _log_det_spd(matrix: torch.Tensor) -> torch.Tensor:
    """log det of symmetric positive definite matrices from their Cholesky factor: 2 Σ log diag(L)."""
    return 2.0 * torch.linalg.cholesky(matrix).diagonal(dim1=-2, dim2=-1).log().sum(-1)


@register(
    "rmi", "region", "Zhao, Wang, Cai, He, Region Mutual Information Loss for Semantic Segmentation, NeurIPS 2019"
)
class RegionMutualInformationLoss(SegmentationLoss):
    r"""Region mutual information loss :math:`\lambda\,\mathrm{BCE} + (1 - \lambda)\,\mathrm{RMI}`, per class (sigmoid).

    Each voxel of the pooled label map :math:`Y` and probability map :math:`P` of a class is represented by its
    :math:`R^d` neighbourhood (:math:`R \times R` in 2D, :math:`R \times R \times R` in 3D), a point of
    dimension :math:`D = R^d`. From the centred points of one image, :math:`\Sigma_Y = \tilde Y \tilde Y^T`,
    :math:`\Sigma_P = \tilde P \tilde P^T`, :math:`\Sigma_{YP} = \tilde Y \tilde P^T` (sums over positions, not
    means, as in the authors' code) and the posterior covariance of :math:`Y` given :math:`P`

    .. math::

        \Sigma_{Y|P} = \Sigma_Y - \Sigma_{YP} (\Sigma_P + \alpha I)^{-1} \Sigma_{YP}^T,\qquad
        \mathrm{RMI} = \frac{1}{2D} \log\det\left(\Sigma_{Y|P} + \alpha I\right)

    is the negative lower bound of the mutual information :math:`I(Y; P)` up to constants, per point dimension.
    BCE is the binary cross-entropy with logits averaged over the voxels that take part.

    Defaults from the authors' experiments: ``radius=3`` (R), ``bce_weight=0.5`` (λ), ``pool="avg"`` with
    kernel = stride = ``pool_size=4`` and padding ``pool_size // 2`` (zeros counted, as in their code),
    ``alpha=5e-4`` (the regulariser keeping the matrices positive definite). The covariances, the Cholesky
    factorisations and the log-det run in float64 (outside autocast), then return to the input's float dtype.
    3D (R×R×R neighbourhoods, ``avg_pool3d``) is new here: the paper and the authors' code are 2D only.

    Cost: at full resolution the loss takes one sigmoid and one softplus and pools the probabilities
    (:class:`_SigmoidBCE`, whose backward is two passes); a label-map target is read by index and pooled by
    counting labels per window, never expanded one-hot. The three covariances come from one float64 ``bmm`` of the
    stacked pooled neighbourhood vectors (:class:`_JointCovariance`), their gradient from one ``baddbmm``.

    Sign: RMI is negative by definition (the bound is up to constants); since :math:`\Sigma_{Y|P} \succeq 0` it
    is bounded below by :math:`\frac{1}{2}\log\alpha \approx -3.80` per class. Empty classes: a class absent from
    (or filling) an image's pooled target has :math:`\tilde Y = 0`, so its RMI term is exactly that minimum
    :math:`\frac{1}{2}\log\alpha` with zero gradient; only its BCE term trains it. Ignored voxels
    (``ignore_index``) are zero in both maps before pooling (the authors' rule) and excluded from BCE.

    Scale: the authors sum both terms over classes and divide BCE by (valid voxels + 1); with
    ``reduction="mean"`` (mean over images and classes) their value is about C times this one.
    ``reduction="none"`` returns ``(B, C', 1, ...)``. The pooled map must be at least ``radius`` voxels wide in
    every dim (a clear ValueError otherwise: lower ``pool_size`` for small patches).

    Reference: Zhao, Wang, Cai, He, "Region Mutual Information Loss for Semantic Segmentation", NeurIPS 2019.
    """

    nan_propagates = False  # NaN logits can fall outside the voxels it scores

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        radius: int = 3,
        bce_weight: float = 0.5,
        pool: str = "avg",
        pool_size: int = 4,
        alpha: float = 5e-4,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid=True, reduction=reduction, ignore_index=ignore_index)
        if int(radius) != radius or radius < 1:
            raise ValueError(f"radius must be a positive integer, got {radius}")
        if not 0.0 <= bce_weight <= 1.0:
            raise ValueError(f"bce_weight must be in [0, 1], got {bce_weight}")
        if pool not in POOL_MODES:
            raise ValueError(f"pool must be one of {POOL_MODES}, got {pool!r}")
        if int(pool_size) != pool_size or pool_size < 1:
            raise ValueError(f"pool_size must be a positive integer, got {pool_size}")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive (it keeps the covariances invertible), got {alpha}")
        self.radius = int(radius)
        self.bce_weight = float(bce_weight)
        self.pool = pool
        self.pool_size = int(pool_size)
        self.alpha = float(alpha)

    def _downsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 1:
            return x
        spatial_ndim = x.ndim - 2
        if spatial_ndim > 3:
            raise ValueError(f"pooling supports 1 to 3 spatial dims, got input shape {tuple(x.shape)}")
        pool = getattr(functional, f"{self.pool}_pool{spatial_ndim}d")
        return pool(x, kernel_size=self.pool_size, stride=self.pool_size, padding=self.pool_size // 2)

    def rmi_lower_bound(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """RMI term per image and class, ``(B, C)``, from probabilities and (binary) labels ``(B, C, *spatial)``."""
        return self._pooled_rmi(self._downsample(probs), self._downsample(labels))

    def _pooled_rmi(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """:meth:`rmi_lower_bound` of maps already pooled."""
        if min(probs.shape[2:]) < self.radius:
            raise ValueError(
                f"pooled spatial shape {tuple(probs.shape[2:])} (input {self.pool_size}x pooled) is smaller than "
                f"the neighbourhood radius {self.radius}: use a larger patch or a smaller pool_size/radius"
            )
        with torch.autocast(probs.device.type, enabled=False):
            joint = _JointCovariance.apply(labels.detach().double(), probs.double(), self.radius)
            dim = joint.shape[-1] // 2
            regulariser = self.alpha * torch.eye(dim, dtype=joint.dtype, device=joint.device)
            # Σ_YP (Σ_P + αI)^-1 Σ_YP^T as S^T S with S = L^-1 Σ_YP^T and L L^T = Σ_P + αI
            pred_factor = torch.linalg.cholesky(joint[..., dim:, dim:] + regulariser)
            solved = torch.linalg.solve_triangular(pred_factor, joint[..., dim:, :dim], upper=False)
            posterior = joint[..., :dim, :dim] - solved.transpose(-1, -2) @ solved
            rmi = 0.5 * _log_det_spd(posterior + regulariser) / dim
        return rmi.to(probs.dtype)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = self.prepare(input, target)
        logits = prep.logits
        if prep.labels is not None:  # a label map: the target is read from it, never built one-hot at full size
            index, keep = _label_index(
                prep.labels, prep.mask, 1 if input.shape[1] == 1 else prep.classes[0], logits.dtype
            )
            probs, bce = _SigmoidBCE.apply(logits, None, index, keep, prep.mask)
            pooled_target = _pooled_one_hot(index, keep, logits.shape[1], self.pool_size, self.pool, logits.dtype)
        else:
            target = prep.target
            probs, bce = _SigmoidBCE.apply(logits, target, None, None, prep.mask)
            pooled_target = self._downsample(target)
        bce = bce / prep.voxel_count().clamp_min(1).unsqueeze(1)
        rmi = self._pooled_rmi(self._downsample(probs), pooled_target)
        loss = self.bce_weight * bce + (1.0 - self.bce_weight) * rmi
        return reduce(loss, self.reduction, input.ndim - 2)
