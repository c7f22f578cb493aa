"""Overlap of two binary masks: Dice, IoU, and the sizes they come from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OverlapCounts", "overlap_counts"]


@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts of a prediction against a reference: ``intersection`` (TP), ``prediction``, ``reference``.

    Dice and IoU are NaN where both masks are empty (0/0); conventions decide what that case scores.
    """

    intersection: int
    prediction: int
    reference: int

    @property
    def dice(self) -> float:
        r"""Dice similarity coefficient :math:`\frac{2|P \cap R|}{|P| + |R|}` (Dice, Ecology 1945).

        Computed as medpy's ``dc`` (``2.0 * tp / float(|P| + |R|)``), so that the numbers agree to the last bit.
        """
        total = self.prediction + self.reference
        return 2.0 * self.intersection / float(total) if total else float("nan")

    @property
    def iou(self) -> float:
        r"""Intersection over union (Jaccard index) :math:`\frac{|P \cap R|}{|P \cup R|}`."""
        union = self.prediction + self.reference - self.intersection
        return self.intersection / float(union) if union else float("nan")


def overlap_counts(pred: np.ndarray, ref: np.ndarray) -> OverlapCounts:
    """Intersection and sizes of two masks of the same shape (non-zero = inside)."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return OverlapCounts(
        intersection=int(np.count_nonzero(pred & ref)),
        prediction=int(np.count_nonzero(pred)),
        reference=int(np.count_nonzero(ref)),
    )
