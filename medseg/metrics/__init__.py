"""Evaluation metrics for segmentation: overlap, surface distances, scoring conventions, folder evaluation, stats.

``medseg.metrics.evaluate`` is the folder evaluation behind ``scripts/evaluate.py`` and ``medseg evaluate``, built
from one module per job: ``cases`` (case ids and pairing), ``reading`` (files read whole, with their grid),
``labels`` (label spaces, value checks, a bundle's label mapping), ``geometry`` (grid comparison, resampling on
request) and ``report`` (summary and output files). ``medseg.metrics.cityscapes`` is the official Cityscapes
class IoU (imported on use: it reads the label table of :mod:`medseg.data.cityscapes`).
``medseg.metrics.monai_compat`` is MONAI 1.6's functional metric API (``compute_dice``,
``compute_hausdorff_distance``, ...: same signatures, MONAI's NaN/inf) computed by these metrics.
"""

from .conventions import CONVENTIONS, SURFACE_DISTANCE_METRICS, WORST_DISTANCE, Convention, get_convention
from .overlap import OverlapCounts, overlap_counts
from .scoring import score_label_maps, score_masks
from .stats import bootstrap_mean_ci, paired_comparison, wilcoxon_signed_rank
from .surface import SurfaceDistances, image_diagonal, surface_distances, surface_voxels

__all__ = [
    "CONVENTIONS",
    "SURFACE_DISTANCE_METRICS",
    "WORST_DISTANCE",
    "Convention",
    "OverlapCounts",
    "SurfaceDistances",
    "bootstrap_mean_ci",
    "get_convention",
    "image_diagonal",
    "overlap_counts",
    "paired_comparison",
    "score_label_maps",
    "score_masks",
    "surface_distances",
    "surface_voxels",
    "wilcoxon_signed_rank",
]
