"""Score one case: every structure of a label map against the reference, under a convention.

:func:`score_label_maps` finds the bounding box of every label in both maps in one pass each
(``scipy.ndimage.find_objects``), then works on each structure's union box only: the counts, the surfaces and the
two distance transforms never touch the rest of the volume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from .conventions import WORST_DISTANCE, Convention, Score
from .overlap import OverlapCounts, overlap_counts
from .surface import image_diagonal, surface_distances

__all__ = ["score_label_maps", "score_masks", "size_columns"]


def size_columns(ndim: int) -> tuple[str, str, str, str]:
    """Columns of the structure sizes: volumes in mL for 3D images, areas in mm² for 2D ones.

    (reference, prediction, prediction − reference, 100 · (prediction − reference) / reference).
    """
    if ndim == 3:
        return "volume_ref_ml", "volume_pred_ml", "volume_diff_ml", "volume_diff_percent"
    return "area_ref_mm2", "area_pred_mm2", "area_diff_mm2", "area_diff_percent"


def _policy_scores(policy: Mapping[str, Score], convention: Convention, worst: float) -> dict[str, float]:
    return {
        convention.column(m): worst if policy[m] == WORST_DISTANCE else float(policy[m]) for m in convention.metrics
    }


def _measured_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    counts: OverlapCounts,
    spacing: Sequence[float],
    convention: Convention,
    nsd_tolerance: float,
) -> dict[str, float]:
    values = {"dice": counts.dice, "iou": counts.iou}
    if set(convention.metrics) - {"dice", "iou"}:
        distances = surface_distances(
            pred, ref, spacing, surface=convention.surface, distance_metric=convention.distance_metric
        )
        values["hd"] = distances.hausdorff()
        values["hd95"] = distances.hausdorff_percentile(95.0, pooled=convention.hd95 == "pooled")
        values["assd"] = distances.average_symmetric()
        if "nsd" in convention.metrics:
            values["nsd"] = distances.surface_dice(nsd_tolerance)
    return {convention.column(m): values[m] for m in convention.metrics}


def score_masks(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    convention: Convention,
    nsd_tolerance: float = 1.0,
    image_shape: Sequence[int] | None = None,
) -> dict[str, float | str]:
    """Metrics of one structure from two binary masks, with the convention's empty policies.

    Args:
        pred: predicted mask (may be a crop of the image).
        ref: reference mask, same shape.
        spacing: voxel size along each array axis in mm (read from the image header).
        convention: the scoring convention (:data:`~medseg.metrics.conventions.CONVENTIONS`).
        nsd_tolerance: NSD tolerance in the convention's distance unit (mm; voxels for chessboard or taxicab).
        image_shape: the full image's shape when the masks are crops; sizes the worst-case distance.

    Returns:
        The convention's metric columns, the size columns (:func:`size_columns`) and ``empty_mask``: which mask is
        empty (``"none"``, ``"reference"``, ``"prediction"`` or ``"both"``).
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} does not fit masks of shape {pred.shape}")
    counts = overlap_counts(pred, ref)
    distance_spacing = spacing if convention.uses_spacing else (1.0,) * pred.ndim
    if convention.surface == "surfels" and convention.physical_spacing:
        distance_spacing = spacing  # sizes the surface elements; chessboard/taxicab distances stay in voxels
    worst = image_diagonal(
        image_shape if image_shape is not None else pred.shape, distance_spacing, convention.distance_metric
    )
    if counts.reference == 0 and counts.prediction == 0:
        empty, scores = "both", _policy_scores(convention.both_empty, convention, worst)
    elif counts.reference == 0:
        empty, scores = "reference", _policy_scores(convention.reference_empty, convention, worst)
    elif counts.prediction == 0:
        empty, scores = "prediction", _policy_scores(convention.prediction_empty, convention, worst)
    else:
        empty = "none"
        scores = _measured_scores(pred, ref, counts, distance_spacing, convention, nsd_tolerance)
    # sizes in physical units whatever the convention: a volume in voxels says nothing across scanners
    unit = math.prod(spacing) / (1000.0 if pred.ndim == 3 else 1.0)
    ref_size, pred_size = counts.reference * unit, counts.prediction * unit
    ref_col, pred_col, diff_col, percent_col = size_columns(pred.ndim)
    sizes = {
        ref_col: ref_size,
        pred_col: pred_size,
        diff_col: pred_size - ref_size,
        percent_col: 100.0 * (pred_size - ref_size) / ref_size if counts.reference else float("nan"),
    }
    return {**scores, **sizes, "empty_mask": empty}


def score_label_maps(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[int, str],
    convention: Convention,
    nsd_tolerance: float = 1.0,
) -> list[dict[str, object]]:
    """One row per structure (``label``, ``structure`` name, metrics, sizes, ``empty_mask``) for two label maps.

    Args:
        pred: integer label map of the prediction, 2D or 3D.
        ref: integer label map of the reference, same shape.
        spacing: voxel size along each array axis in mm.
        labels: label value → structure name; 0 (background) is not scored.
        convention: the scoring convention.
        nsd_tolerance: NSD tolerance in the convention's distance unit.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D label map, got shape {pred.shape}")
    for name, array in (("prediction", pred), ("reference", ref)):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} label map must hold integers, got dtype {array.dtype}")
    scored = {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    if not scored or min(scored) < 0:
        raise ValueError(f"labels must map positive label values to names, got {dict(labels)}")
    max_label = max(scored)
    pred_boxes = ndimage.find_objects(pred, max_label=max_label)
    ref_boxes = ndimage.find_objects(ref, max_label=max_label)
    rows: list[dict[str, object]] = []
    for label, name in sorted(scored.items()):
        boxes = [b for b in (pred_boxes[label - 1], ref_boxes[label - 1]) if b is not None]
        if boxes:
            box = tuple(
                slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in range(pred.ndim)
            )
        else:  # absent from both: an empty crop is all the policies need
            box = tuple(slice(0, 0) for _ in range(pred.ndim))
        scores = score_masks(
            pred[box] == label, ref[box] == label, spacing, convention, nsd_tolerance, image_shape=pred.shape
        )
        rows.append({"label": label, "structure": name, **scores})
    return rows
