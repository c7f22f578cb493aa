"""Region mutual information loss: BCE plus a lower bound of the mutual information of R×R(×R) neighbourhoods."""

from __future__ import annotations

import itertools

import torch
from torch.nn import functional

from ._prepare import SegmentationLoss, reduce
from .registry import register

__all__ = ["RegionMutualInformationLoss", "neighbourhood_vectors"]

POOL_MODES = ("avg", "max")


def neighbourhood_vectors(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Each voxel's ``radius``-wide cube of neighbours as a vector: ``(B, C, *spatial)`` -> ``(B, C, R^d, M)``.

    Only positions whose whole neighbourhood lies inside the map are used (no padding), so
    ``M = prod(size - radius + 1)``; the offsets run in C order (last spatial dim fastest).
    """
    spatial = x.shape[2:]
    valid = [size - radius + 1 for size in spatial]
    shifted = [
        x[(slice(None), slice(None), *(slice(o, o + n) for o, n in zip(offset, valid, strict=True)))]
        for offset in itertools.product(range(radius), repeat=len(spatial))
    ]
    return torch.stack(shifted, dim=2).flatten(3)


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
        probs, labels = self._downsample(probs), self._downsample(labels)
        if min(probs.shape[2:]) < self.radius:
            raise ValueError(
                f"pooled spatial shape {tuple(probs.shape[2:])} (input {self.pool_size}x pooled) is smaller than "
                f"the neighbourhood radius {self.radius}: use a larger patch or a smaller pool_size/radius"
            )
        with torch.autocast(probs.device.type, enabled=False):
            y = neighbourhood_vectors(labels.double(), self.radius)
            p = neighbourhood_vectors(probs.double(), self.radius)
            y = y - y.mean(-1, keepdim=True)
            p = p - p.mean(-1, keepdim=True)
            dim = y.shape[2]
            regulariser = self.alpha * torch.eye(dim, dtype=y.dtype, device=y.device)
            # Σ_YP (Σ_P + αI)^-1 Σ_YP^T as S^T S with S = L^-1 Σ_YP^T and L L^T = Σ_P + αI
            pred_factor = torch.linalg.cholesky(p @ p.transpose(-1, -2) + regulariser)
            solved = torch.linalg.solve_triangular(pred_factor, p @ y.transpose(-1, -2), upper=False)
            posterior = y @ y.transpose(-1, -2) - solved.transpose(-1, -2) @ solved
            rmi = 0.5 * _log_det_spd(posterior + regulariser) / dim
        return rmi.to(probs.dtype)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = self.prepare(input, target)
        foreground = prep.target.to(prep.logits.dtype)
        voxel_bce = -(foreground * prep.log_probs + (1.0 - foreground) * functional.logsigmoid(-prep.logits))
        bce = prep.masked(voxel_bce).flatten(2).sum(-1) / prep.voxel_count().clamp_min(1).unsqueeze(1)
        rmi = self.rmi_lower_bound(prep.masked(prep.probs), foreground)
        loss = self.bce_weight * bce + (1.0 - self.bce_weight) * rmi
        return reduce(loss, self.reduction, input.ndim - 2)
