"""MONAI's functional metric API on medseg's metrics: same names, arguments and defaults, MONAI's ``(B, C)`` tables.

:func:`compute_dice`, :func:`compute_iou`, :func:`compute_hausdorff_distance`,
:func:`compute_average_surface_distance` and :func:`compute_surface_dice` take what MONAI 1.6's functions of the same
name (``monai.metrics``) take, and return what they return: a float32 tensor of one value per batch item and class,
on the input's device. Every value comes from medseg's own code (:mod:`~medseg.metrics.overlap`,
:func:`~medseg.metrics.surface.surface_distances`) with the ``monai`` convention's results for empty masks
(:data:`~medseg.metrics.conventions.CONVENTIONS`), so ``monai.metrics.compute_X`` can be swapped for
``medseg.metrics.monai_compat.compute_X``. Reduce the table as MONAI's metric classes do, with
``monai.metrics.utils.do_metric_reduction`` (NaN left out of the means).

MONAI's own test cases for these metrics run against these functions (tests/metrics/test_monai_metric_cases.py);
where medseg deliberately differs (binary input only, ``percentile=0``, ``ignore_index``):
docs/monai_differences.md, "Metrics". ``compute_dice(per_component=True)``, a metric medseg does not compute, is
passed on to MONAI's function.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import monai.metrics
import numpy as np
import torch
from monai.metrics.utils import prepare_spacing

from .conventions import CONVENTIONS, SURFACE_DISTANCE_METRICS
from .overlap import OverlapCounts, overlap_counts
from .surface import SurfaceDistances, surface_distances

__all__ = [
    "compute_average_surface_distance",
    "compute_dice",
    "compute_hausdorff_distance",
    "compute_iou",
    "compute_surface_dice",
]

_MONAI = CONVENTIONS["monai"]
_Spacing = int | float | np.ndarray | Sequence[int | float | np.ndarray | Sequence[int | float]] | None


def _refuse(ignore_index: int | None) -> None:
    """MONAI 1.6's ``ignore_index``, which medseg does not take over (docs/monai_differences.md says why)."""
    if ignore_index is not None:
        raise ValueError(
            "ignore_index is not supported: MONAI 1.6 applies it differently in each metric (voxels masked, a "
            "channel set to NaN, or only warnings silenced); set the ignored voxels to background in y_pred and y, "
            "or use medseg evaluate --ignore-labels"
        )


def _numpy(data: Any) -> np.ndarray:
    return data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)


def _device(data: Any) -> torch.device:
    return data.device if isinstance(data, torch.Tensor) else torch.device("cpu")


def _binary(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as a bool mask; values other than 0 and 1 are refused (MONAI reads them inconsistently)."""
    if array.dtype != bool:
        odd = array[(array != 0) & (array != 1)]
        if odd.size:
            raise ValueError(
                f"{name} must hold 0 and 1 (one-hot or binarised masks), found {odd.flat[0].item()!r}; binarise it "
                "first (e.g. monai.transforms.AsDiscrete(argmax=True, to_onehot=C) or threshold=0.5)"
            )
    return array.astype(bool)


def _drop_background(array: np.ndarray) -> np.ndarray:
    """MONAI's ``ignore_background``: the first channel is dropped when there is more than one."""
    return array[:, 1:] if array.shape[1] > 1 else array


def _one_hot_pair(y_pred: Any, y: Any, include_background: bool) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = _numpy(y_pred), _numpy(y)
    if pred.ndim < 3:
        raise ValueError(f"y_pred should have at least three dimensions (batch, channel, spatial), got {pred.shape}.")
    if not include_background:
        pred, ref = _drop_background(pred), _drop_background(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"y_pred and y should have same shapes, got {pred.shape} and {ref.shape}.")
    return _binary(pred, "y_pred"), _binary(ref, "y")


def _table(values: np.ndarray, like: Any) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32, device=_device(like))


def _class_masks(array: np.ndarray, classes: Sequence[int], n_classes: int, name: str) -> np.ndarray:
    """``(B, K, ...)`` masks of ``classes`` from one-hot channels or from class indices ``(B, 1, ...)``."""
    if array.shape[1] == 1:
        indices = array[:, 0]
        allowed = np.arange(max(n_classes, 2))
        odd = indices[~np.isin(indices, allowed)]
        if odd.size:
            raise ValueError(
                f"{name} holds class index {odd.flat[0].item()!r}, outside 0..{allowed[-1]}; pass num_classes that "
                "covers every class, or one-hot channels"
            )
        return np.stack([indices == c for c in classes], axis=1)
    if array.shape[1] != n_classes:
        raise ValueError(f"{name} has {array.shape[1]} channels for {n_classes} classes (num_classes or y_pred)")
    return _binary(array[:, list(classes)], name)


def compute_dice(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    include_background: bool = True,
    ignore_empty: bool = True,
    num_classes: int | None = None,
    per_component: bool = False,
    ignore_index: int | None = None,
) -> torch.Tensor:
    r"""Dice :math:`2|P \cap R| / (|P| + |R|)` per batch item and class, as ``monai.metrics.compute_dice``.

    Args:
        y_pred: binarised prediction, one-hot ``(B, C, ...)`` or class indices ``(B, 1, ...)`` with ``num_classes``.
        y: reference, one-hot or class indices.
        include_background: score channel 0.
        ignore_empty: NaN where the reference is empty (MONAI's default); ``False``: 1 when both masks are empty,
            0 when only the reference is.
        num_classes: the number of classes (needed for class-index ``y_pred``).
        per_component: MONAI 1.6's connected-component Dice (Voronoi regions of the reference's components), which
            medseg does not compute: passed on to ``monai.metrics.compute_dice``.
        ignore_index: refused (docs/monai_differences.md).
    """
    _refuse(ignore_index)
    if per_component:
        return monai.metrics.compute_dice(y_pred, y, include_background, ignore_empty, num_classes, per_component=True)
    pred, ref = _numpy(y_pred), _numpy(y)
    if pred.ndim < 3:
        raise ValueError(f"y_pred should have at least 3 dimensions (batch, channel, spatial), got {pred.ndim}.")
    n_classes = pred.shape[1] if num_classes is None else num_classes
    classes = range(0 if include_background else 1, n_classes) if n_classes > 1 else [1]
    pred_masks = _class_masks(pred, classes, n_classes, "y_pred")
    ref_masks = _class_masks(ref, classes, n_classes, "y")
    if pred_masks.shape != ref_masks.shape:
        raise ValueError(f"y_pred and y should have same spatial shapes, got {pred.shape} and {ref.shape}.")

    def dice(counts: OverlapCounts) -> float:
        if counts.reference or not ignore_empty:  # MONAI ignore_empty=False: 1 if both are empty, else the formula
            return counts.dice if counts.prediction + counts.reference else 1.0
        return _MONAI.reference_empty["dice"] if counts.prediction else _MONAI.both_empty["dice"]

    return _table(_per_item(pred_masks, ref_masks, lambda p, r: dice(overlap_counts(p, r))), y_pred)


def compute_iou(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    include_background: bool = True,
    ignore_empty: bool = True,
    ignore_index: int | None = None,
) -> torch.Tensor:
    r"""IoU :math:`|P \cap R| / |P \cup R|` per batch item and class, as ``monai.metrics.compute_iou``.

    ``ignore_empty``: NaN where the reference is empty (MONAI's default); ``False``: 1 when both masks are empty.
    """
    _refuse(ignore_index)
    pred, ref = _one_hot_pair(y_pred, y, include_background)

    def iou(counts: OverlapCounts) -> float:
        if counts.reference or not ignore_empty:
            return counts.iou if counts.prediction + counts.reference else 1.0
        return _MONAI.reference_empty["iou"] if counts.prediction else _MONAI.both_empty["iou"]

    return _table(_per_item(pred, ref, lambda p, r: iou(overlap_counts(p, r))), y_pred)


def _per_item(pred: np.ndarray, ref: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float]) -> np.ndarray:
    out = np.empty(pred.shape[:2], dtype=np.float64)
    for b, c in np.ndindex(*pred.shape[:2]):
        out[b, c] = score(pred[b, c], ref[b, c])
    return out


def _spacings(spacing: _Spacing, batch: int, ndim: int, distance_metric: str, areas: bool) -> list[tuple[float, ...]]:
    """One spacing per batch item (MONAI's ``prepare_spacing``); chessboard/taxicab distances take none."""
    if distance_metric not in SURFACE_DISTANCE_METRICS:
        raise ValueError(f"distance_metric {distance_metric} is not implemented.")
    per_item = prepare_spacing(spacing=spacing, batch_size=batch, img_dim=ndim)
    if distance_metric != "euclidean" and spacing is not None and not areas:
        warnings.warn(
            f"spacing is ignored by {distance_metric} distances, which count voxel steps (as in MONAI)", stacklevel=3
        )
        return [(1.0,) * ndim] * batch
    out = []
    for item in per_item:
        if item is None:
            out.append((1.0,) * ndim)
        elif np.ndim(item) == 0:
            out.append((float(item),) * ndim)
        else:
            out.append(tuple(float(s) for s in item))
    return out


def _surface_table(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: _Spacing,
    distance_metric: str,
    measure: Callable[[SurfaceDistances, int], float],
    policy_metric: str,
    class_offset: int,
    surfels: bool = False,
) -> np.ndarray:
    """A surface metric (``measure(distances, channel)``) per batch item and channel, in MONAI's order, with the
    ``monai`` convention's value where a mask is empty."""
    ndim = pred.ndim - 2
    spacings = _spacings(spacing, pred.shape[0], ndim, distance_metric, areas=surfels)
    out = np.empty(pred.shape[:2], dtype=np.float64)
    for b, c in np.ndindex(*pred.shape[:2]):
        p, r = pred[b, c], ref[b, c]
        for present, what in ((r.any(), "ground truth"), (p.any(), "prediction")):
            if not present:  # MONAI's warnings
                warnings.warn(
                    f"the {what} of class {c + class_offset} is all 0, this may result in nan/inf distance.",
                    stacklevel=3,
                )
        if not r.any():
            out[b, c] = getattr(_MONAI, "reference_empty" if p.any() else "both_empty")[policy_metric]
        elif not p.any():
            out[b, c] = _MONAI.prediction_empty[policy_metric]
        else:
            surface = "surfels" if surfels else "voxels"
            item_spacing = spacings[b] if surfels or distance_metric == "euclidean" else None
            distances = surface_distances(p, r, item_spacing, surface, distance_metric)  # type: ignore[arg-type]
            out[b, c] = measure(distances, c)
    return out


def compute_hausdorff_distance(
    y_pred: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    include_background: bool = False,
    distance_metric: str = "euclidean",
    percentile: float | None = None,
    directed: bool = False,
    spacing: _Spacing = None,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Hausdorff distance (or a percentile of it) per batch item and class, as MONAI's ``compute_hausdorff_distance``.

    Max (or percentile, linear interpolation) of the two directed distances between the surface voxels;
    ``directed``: prediction → reference only. One mask empty: inf (NaN with a percentile); both empty: NaN.
    ``percentile=0`` is the 0th percentile (MONAI reads 0 as ``None``: the maximum).
    """
    _refuse(ignore_index)
    if percentile is not None and not 0 <= percentile <= 100:
        raise ValueError(f"percentile should be a value between 0 and 100, get {percentile}.")
    pred, ref = _one_hot_pair(y_pred, y, include_background)

    def measure(distances: SurfaceDistances, _: int) -> float:
        if percentile is None:
            return distances.hausdorff(directed=directed)
        return distances.hausdorff_percentile(percentile, directed=directed)

    policy = "hd" if percentile is None else "hd95"
    offset = 0 if include_background else 1
    return _table(_surface_table(pred, ref, spacing, distance_metric, measure, policy, offset), y_pred)


def compute_average_surface_distance(
    y_pred: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    include_background: bool = False,
    symmetric: bool = False,
    distance_metric: str = "euclidean",
    spacing: _Spacing = None,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Average surface distance per batch item and class, as MONAI's ``compute_average_surface_distance``.

    ``symmetric=False`` (MONAI's default): the mean distance from the prediction's surface voxels to the
    reference's; ``True``: the mean over the voxels of both surfaces (ASSD). One mask empty: inf; both: NaN.
    """
    _refuse(ignore_index)
    pred, ref = _one_hot_pair(y_pred, y, include_background)

    def measure(distances: SurfaceDistances, _: int) -> float:
        return distances.average_symmetric() if symmetric else distances.average_directed()

    # MONAI's warnings name the channel after the background is dropped here (HD and NSD name the class)
    return _table(_surface_table(pred, ref, spacing, distance_metric, measure, "assd", 0), y_pred)


def compute_surface_dice(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    class_thresholds: list[float],
    include_background: bool = False,
    distance_metric: str = "euclidean",
    spacing: _Spacing = None,
    use_subvoxels: bool = False,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Normalised surface Dice per batch item and class, as ``monai.metrics.compute_surface_dice``.

    The share of both surfaces within ``class_thresholds[c]`` of the other surface (a distance equal to the
    threshold counts); ``use_subvoxels``: surface elements weighted by area (DeepMind). One mask empty: 0; both: NaN.
    """
    _refuse(ignore_index)
    if not include_background:
        y_pred, y = _drop_background(y_pred), _drop_background(y)
    if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("y_pred and y must be PyTorch Tensor.")
    if y_pred.ndimension() not in (4, 5) or y.ndimension() not in (4, 5):
        raise ValueError("y_pred and y should be one-hot encoded: [B,C,H,W] or [B,C,H,W,D].")
    if y_pred.shape != y.shape:
        raise ValueError(
            f"y_pred and y should have same shape, but instead, shapes are {y_pred.shape} (y_pred) and {y.shape} (y)."
        )
    if y_pred.shape[1] != len(class_thresholds):
        raise ValueError(
            f"number of classes ({y_pred.shape[1]}) does not match number of class thresholds "
            f"({len(class_thresholds)})."
        )
    if any(~np.isfinite(class_thresholds)):
        raise ValueError("All class thresholds need to be finite.")
    if any(np.array(class_thresholds) < 0):
        raise ValueError("All class thresholds need to be >= 0.")
    pred, ref = _binary(_numpy(y_pred), "y_pred"), _binary(_numpy(y), "y")
    offset = 0 if include_background else 1

    def measure(distances: SurfaceDistances, channel: int) -> float:
        return distances.surface_dice(float(class_thresholds[channel]))

    table = _surface_table(pred, ref, spacing, distance_metric, measure, "nsd", offset, surfels=use_subvoxels)
    return _table(table, y_pred)
