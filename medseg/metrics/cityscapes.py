"""Cityscapes pixel-level semantic labelling: class IoU and mIoU by the official evaluation's algorithm.

``cityscapesscripts/evaluation/evalPixelLevelSemanticLabeling.py`` (Cordts et al., CVPR 2016) scores labelId
images (0..33) through a confusion matrix summed over all images, rows = ground truth, columns = prediction.
For each of the 19 evaluated classes ``c`` (trainId ≠ 255):

- TP = M[c, c]; FN = row sum − TP (a prediction of a non-evaluated id is still a miss);
- FP = predictions of ``c`` on pixels whose ground truth is another *evaluated* class (ignored ground truth,
  e.g. ``unlabeled`` or ``license plate``, costs nothing);
- IoU = TP / (TP + FP + FN), NaN when that is 0/0; mIoU = mean over the classes whose IoU is not NaN.

Every count is a sum over images, so the per-image counts written by the evaluation add up to the official
dataset-level numbers. The instance-level iIoU (needs ``instanceIds`` images) is not computed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["NUM_LABEL_IDS", "class_counts", "class_iou", "evaluated_classes", "labelid_confusion", "mean_iou"]

#: labelIds 0..33 (``license plate``, id −1, never appears in a labelIds image).
NUM_LABEL_IDS = 34


def evaluated_classes() -> dict[int, tuple[int, str]]:
    """labelId → (trainId, name) of the 19 evaluated classes, from :mod:`medseg.data.cityscapes`."""
    from medseg.data.cityscapes import TRAIN_CLASS_NAMES, TRAIN_ID_TO_LABEL_ID

    return {label_id: (train_id, TRAIN_CLASS_NAMES[train_id]) for train_id, label_id in TRAIN_ID_TO_LABEL_ID.items()}


def labelid_confusion(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The ``(34, 34)`` confusion matrix (rows: ground-truth labelId, columns: predicted labelId) of one image.

    Raises:
        ValueError: shapes differ, or a value lies outside the labelIds 0..33 (a trainId 255 in a prediction,
            for instance: the official script would crash on it).
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {ref.shape}")
    for name, array in (("prediction", pred), ("ground truth", ref)):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must hold integer labelIds, got dtype {array.dtype}")
        values = np.unique(array)
        bad = values[(values < 0) | (values >= NUM_LABEL_IDS)]
        if bad.size:
            raise ValueError(f"{name} holds values {bad.tolist()} outside the labelIds 0..{NUM_LABEL_IDS - 1}")
    encoded = ref.astype(np.int64).ravel() * NUM_LABEL_IDS + pred.astype(np.int64).ravel()
    return np.bincount(encoded, minlength=NUM_LABEL_IDS**2).reshape(NUM_LABEL_IDS, NUM_LABEL_IDS)


def class_counts(confusion: np.ndarray) -> dict[int, tuple[int, int, int]]:
    """labelId → (TP, FP, FN) of each evaluated class, with the official FP rule (ignored ground truth is free)."""
    classes = evaluated_classes()
    evaluated = np.zeros(NUM_LABEL_IDS, dtype=bool)
    evaluated[list(classes)] = True
    counts = {}
    for label_id in classes:
        tp = int(confusion[label_id, label_id])
        fn = int(confusion[label_id].sum()) - tp
        fp = int(confusion[evaluated, label_id].sum()) - tp
        counts[label_id] = (tp, fp, fn)
    return counts


def class_iou(counts: Mapping[int, tuple[int, int, int]]) -> dict[int, float]:
    """labelId → IoU = TP / (TP + FP + FN), NaN where the class is absent from ground truth and prediction."""
    return {k: tp / (tp + fp + fn) if tp + fp + fn else float("nan") for k, (tp, fp, fn) in counts.items()}


def mean_iou(iou: Mapping[int, float]) -> float:
    """Mean over the classes whose IoU is defined (the official ``averageScoreClasses``)."""
    defined = [v for v in iou.values() if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")
