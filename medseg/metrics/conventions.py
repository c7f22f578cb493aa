"""Scoring conventions: which metrics, in which units, and what an empty reference or prediction scores.

Published evaluation protocols disagree on exactly the cases that decide a mean: a structure absent from the
reference, from the prediction, or from both; and on what "HD95" means. A :class:`Convention` writes those
choices down once, and the evaluation copies its description into every output.

- ``clinical`` (default): Metrics Reloaded's recommendations (Maier-Hein, Reinke et al., "Metrics reloaded:
  recommendations for image analysis validation", Nature Methods 2024), computed as MONAI 1.6 and the
  MetricsReloaded package do: distances in mm from the image spacing, HD95 = the larger of the two directed
  95th percentiles (linear interpolation), ASSD pooled over both surfaces, NSD at a tolerance in mm.
- ``transunet``: the protocol of TransUNet (Chen et al., arXiv 2102.04306, 2021) and the Synapse papers that
  copy it: medpy's ``dc`` and ``hd95`` without spacing (voxel units, 95th percentile of the pooled distances of
  both directions), a prediction of an absent organ scores (1, 0), an empty prediction (0, 0).
- ``nnunet``: nnU-Net v2's ``summary.json`` (Isensee et al., Nature Methods 2021): Dice and IoU only, NaN where
  both masks are empty (left out of the means).
- ``monai``: MONAI 1.6's metric classes with their default arguments (``DiceMetric``, ``MeanIoU``,
  ``HausdorffDistanceMetric``, ``SurfaceDistanceMetric(symmetric=True)``, ``SurfaceDiceMetric``), including
  their results for empty masks: NaN Dice and IoU when the reference is empty (``ignore_empty=True``), inf HD
  and ASSD when one mask is empty, NaN HD95 then (``torch.quantile`` of infinite distances), NaN for every
  distance when both are empty, NSD 0 when one mask is empty and NaN when both are.

A convention measures surface distances with one ``distance_metric``: ``euclidean`` (in mm, from the spacing), or
``chessboard`` / ``taxicab`` (L∞ / L1, in voxels: MONAI computes them with scipy's ``distance_transform_cdt``,
which takes no spacing), where the convention has surface distances and is not the medpy-defined ``transunet``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CONVENTIONS",
    "DISTANCE_METRICS",
    "METRICS",
    "SURFACE_DISTANCE_METRICS",
    "WORST_DISTANCE",
    "Convention",
    "get_convention",
]

#: Placeholder in an empty policy: the largest distance possible in the image (its diagonal, between the centres
#: of two opposite corner voxels), Metrics Reloaded's "worst possible value" for a distance with one mask empty.
WORST_DISTANCE = "worst"
#: Every metric a convention may report.
METRICS = ("dice", "iou", "hd", "hd95", "assd", "nsd")
#: The metrics measured in distance units (mm, or voxels under ``transunet``).
DISTANCE_METRICS = ("hd", "hd95", "assd")

#: How a surface distance is measured (MONAI's ``distance_metric``): Euclidean (L2), chessboard (L∞), taxicab (L1).
SURFACE_DISTANCE_METRICS = ("euclidean", "chessboard", "taxicab")

#: A value in an empty policy: a number (NaN and inf allowed), or :data:`WORST_DISTANCE`.
Score = float | Literal["worst"]
DistanceMetric = Literal["euclidean", "chessboard", "taxicab"]


@dataclass(frozen=True)
class Convention:
    """One scoring convention: metrics, units, HD95 definition, surface representation and empty policies.

    The three policies give every metric's value for a structure that is empty in both masks
    (``both_empty``), only in the reference (``reference_empty``) or only in the prediction
    (``prediction_empty``); a metric is computed from the masks only when both are non-empty.

    Attributes:
        name: the name used on the command line.
        metrics: the metrics reported, from ``dice``, ``iou``, ``hd``, ``hd95``, ``assd``, ``nsd``.
        physical_spacing: distances in mm from the image spacing (``False``: in voxels, spacing ignored).
        hd95: ``"max_directed"`` (MONAI, MetricsReloaded, DeepMind: the larger directed 95th percentile) or
            ``"pooled"`` (medpy: the 95th percentile of both directions' distances together).
        surface: ``"voxels"`` (surface = mask voxels with a face-neighbour outside the mask, each weighing one;
            MONAI's default, MetricsReloaded, medpy) or ``"surfels"`` (DeepMind's surface elements on the voxel
            corner grid, weighted by area; MONAI's ``use_subvoxels``).
        description: one paragraph for the outputs: where the convention comes from.
        distance_metric: ``"euclidean"`` (in mm when ``physical_spacing``), ``"chessboard"`` or ``"taxicab"``
            (always in voxels, as MONAI's ``distance_metric``).
        score_absent: a structure that no reference of the evaluation contains keeps its per-case values
            (``monai``: as MONAI computes them); otherwise it is not scored (NaN, left out of the means).
    """

    name: str
    metrics: tuple[str, ...]
    physical_spacing: bool
    hd95: Literal["max_directed", "pooled"]
    both_empty: Mapping[str, Score]
    reference_empty: Mapping[str, Score]
    prediction_empty: Mapping[str, Score]
    description: str
    surface: Literal["voxels", "surfels"] = "voxels"
    distance_metric: DistanceMetric = "euclidean"
    score_absent: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"convention {self.name!r}: unknown metrics {unknown} (known: {list(METRICS)})")
        for policy in ("both_empty", "reference_empty", "prediction_empty"):
            keys = set(getattr(self, policy))
            if keys != set(self.metrics):
                raise ValueError(
                    f"convention {self.name!r}: {policy} must give {sorted(self.metrics)}, got {sorted(keys)}"
                )
        if self.surface not in ("voxels", "surfels"):
            raise ValueError(f"surface must be 'voxels' or 'surfels', got {self.surface!r}")
        if self.surface == "surfels" and self.hd95 == "pooled":
            raise ValueError("the pooled HD95 (medpy) is defined on voxel surfaces only, not on surfels")
        if self.distance_metric not in SURFACE_DISTANCE_METRICS:
            raise ValueError(
                f"distance_metric must be one of {list(SURFACE_DISTANCE_METRICS)}, got {self.distance_metric!r}"
            )

    @property
    def uses_spacing(self) -> bool:
        """Whether distances are measured in mm from the spacing (Euclidean distances of a physical convention)."""
        return self.physical_spacing and self.distance_metric == "euclidean"

    @property
    def distance_unit(self) -> str:
        """``"mm"`` or ``"voxels"``."""
        return "mm" if self.uses_spacing else "voxels"

    def column(self, metric: str) -> str:
        """The table column of ``metric``: distance metrics carry their unit (``hd95_mm``, ``hd95_voxels``)."""
        return f"{metric}_{self.distance_unit}" if metric in DISTANCE_METRICS else metric

    @property
    def columns(self) -> tuple[str, ...]:
        """The table columns of the reported metrics, in order."""
        return tuple(self.column(m) for m in self.metrics)

    def with_surface(self, surface: Literal["voxels", "surfels"]) -> Convention:
        """The same convention on another surface representation (only with distances in mm)."""
        if surface == self.surface:
            return self
        if not self.physical_spacing or not {*DISTANCE_METRICS, "nsd"} & set(self.metrics):
            raise ValueError(
                f"convention {self.name!r} has no surface metrics in mm; surface={surface!r} does not apply"
            )
        return dataclasses.replace(self, surface=surface)

    def with_distance_metric(self, distance_metric: DistanceMetric) -> Convention:
        """The same convention measuring distances as ``distance_metric`` (``chessboard``/``taxicab``: in voxels)."""
        if distance_metric == self.distance_metric:
            return self
        if distance_metric not in SURFACE_DISTANCE_METRICS:
            raise ValueError(
                f"distance_metric must be one of {list(SURFACE_DISTANCE_METRICS)}, got {distance_metric!r}"
            )
        if not {*DISTANCE_METRICS, "nsd"} & set(self.metrics) or self.hd95 == "pooled":
            raise ValueError(
                f"distance_metric={distance_metric!r} does not apply to the {self.name!r} convention "
                f"({'medpy Euclidean distances in voxels' if self.hd95 == 'pooled' else 'no surface metrics'}); "
                "use --convention clinical or monai"
            )
        return dataclasses.replace(self, distance_metric=distance_metric)

    def hd95_definition(self) -> str:
        """HD95 in words, for the outputs."""
        if "hd95" not in self.metrics:
            return "not reported"
        unit = self.distance_unit
        if self.distance_metric != "euclidean":
            unit = f"{unit}, {self.distance_metric} distance"
        if self.hd95 == "pooled":
            return (
                f"95th percentile (linear interpolation) of the distances, in {unit}, from each surface voxel of "
                "either mask to the other mask's surface, both directions pooled (medpy hd95)"
            )
        if self.surface == "surfels":
            return (
                f"max of the two directed 95th percentiles of surface-element distances in {unit}, each percentile "
                "weighted by element area (DeepMind surface-distance compute_robust_hausdorff)"
            )
        return (
            f"max of the two directed 95th percentiles (linear interpolation) of surface-voxel distances in {unit} "
            "(MONAI 1.6 HausdorffDistanceMetric(percentile=95), MetricsReloaded)"
        )

    def describe(self, nsd_tolerance: float | None = None) -> dict[str, object]:
        """The convention as a JSON-ready dictionary (written into the summary and the docs)."""
        out: dict[str, object] = {
            "name": self.name,
            "description": self.description,
            "metrics": list(self.columns),
            "distance_unit": self.distance_unit,
            "distance_metric": self.distance_metric if set(self.metrics) - {"dice", "iou"} else "not used",
            "surface": self.surface if set(self.metrics) - {"dice", "iou"} else "not used",
            "hd95": self.hd95_definition(),
            "empty_policy": {
                "both_empty": _policy_text(self, self.both_empty),
                "reference_empty_prediction_not": _policy_text(self, self.reference_empty),
                "prediction_empty_reference_not": _policy_text(self, self.prediction_empty),
            },
            "background": "label 0 is background and is not scored",
            "absent_structures": (
                "scored as the convention computes it (kept in the means)"
                if self.score_absent
                else "not scored (NaN) and left out of the overall mean"
            ),
        }
        if "nsd" in self.metrics:
            out[f"nsd_tolerance_{self.distance_unit}"] = nsd_tolerance
        return out


def _policy_text(convention: Convention, policy: Mapping[str, Score]) -> dict[str, object]:
    worst = (
        "image diagonal (worst case)"
        if convention.distance_metric == "euclidean"
        else (f"largest {convention.distance_metric} distance in the image (worst case)")
    )
    return {
        convention.column(m): worst if policy[m] == WORST_DISTANCE else _number_text(policy[m])
        for m in convention.metrics
    }


def _number_text(value: float) -> float | str:
    """A policy value for the outputs: NaN and inf in words (JSON has neither)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


_NAN = float("nan")
_INF = float("inf")

CONVENTIONS: dict[str, Convention] = {
    "clinical": Convention(
        name="clinical",
        metrics=("dice", "iou", "hd", "hd95", "assd", "nsd"),
        physical_spacing=True,
        hd95="max_directed",
        both_empty={"dice": 1.0, "iou": 1.0, "hd": 0.0, "hd95": 0.0, "assd": 0.0, "nsd": 1.0},
        reference_empty={
            "dice": 0.0,
            "iou": 0.0,
            "hd": WORST_DISTANCE,
            "hd95": WORST_DISTANCE,
            "assd": WORST_DISTANCE,
            "nsd": 0.0,
        },
        prediction_empty={
            "dice": 0.0,
            "iou": 0.0,
            "hd": WORST_DISTANCE,
            "hd95": WORST_DISTANCE,
            "assd": WORST_DISTANCE,
            "nsd": 0.0,
        },
        description=(
            "Metrics Reloaded recommendations (Maier-Hein, Reinke et al., Nature Methods 2024), computed as MONAI 1.6 "
            "and MetricsReloaded: distances in mm from the image spacing; both masks empty is a correct result "
            "(Dice/IoU/NSD 1, distances 0); one mask empty scores Dice/IoU/NSD 0 and the worst possible distance "
            "(the image diagonal); ASSD pools the distances of both surfaces; NSD counts surface within the tolerance."
        ),
    ),
    "transunet": Convention(
        name="transunet",
        metrics=("dice", "hd95"),
        physical_spacing=False,
        hd95="pooled",
        both_empty={"dice": 0.0, "hd95": 0.0},
        reference_empty={"dice": 1.0, "hd95": 0.0},
        prediction_empty={"dice": 0.0, "hd95": 0.0},
        description=(
            "TransUNet protocol (Chen et al., arXiv 2102.04306, 2021; Synapse multi-organ): per volume and organ, "
            "medpy dc and hd95 without voxel spacing (HD95 in voxels) when both masks are non-empty; a non-empty "
            "prediction of an organ absent from the reference scores (1, 0); an empty prediction scores (0, 0), also "
            "when the organ is absent from the reference; mean over cases per organ, then over organs."
        ),
    ),
    "nnunet": Convention(
        name="nnunet",
        metrics=("dice", "iou"),
        physical_spacing=True,
        hd95="max_directed",
        both_empty={"dice": _NAN, "iou": _NAN},
        reference_empty={"dice": 0.0, "iou": 0.0},
        prediction_empty={"dice": 0.0, "iou": 0.0},
        description=(
            "nnU-Net v2 summary.json (Isensee et al., Nature Methods 2021): Dice = 2TP/(2TP+FP+FN) and "
            "IoU = TP/(TP+FP+FN) per case and label; NaN where both masks are empty, left out of the per-label means; "
            "the overall mean is the mean of the per-label means (nnU-Net's foreground_mean)."
        ),
    ),
    "monai": Convention(
        name="monai",
        metrics=("dice", "iou", "hd", "hd95", "assd", "nsd"),
        physical_spacing=True,
        hd95="max_directed",
        both_empty={"dice": _NAN, "iou": _NAN, "hd": _NAN, "hd95": _NAN, "assd": _NAN, "nsd": _NAN},
        reference_empty={"dice": _NAN, "iou": _NAN, "hd": _INF, "hd95": _NAN, "assd": _INF, "nsd": 0.0},
        prediction_empty={"dice": 0.0, "iou": 0.0, "hd": _INF, "hd95": _NAN, "assd": _INF, "nsd": 0.0},
        description=(
            "MONAI 1.6 metrics with their defaults, values as MONAI computes them: DiceMetric and MeanIoU "
            "(ignore_empty=True: NaN when the reference is empty), HausdorffDistanceMetric (HD; percentile=95 for "
            "HD95), SurfaceDistanceMetric(symmetric=True) (ASSD), SurfaceDiceMetric (NSD); distances in mm from the "
            "spacing; one mask empty: HD and ASSD inf, HD95 NaN, NSD 0; both empty: every metric NaN. NaN values "
            "are left out of the means, as MONAI's reductions do; inf values are kept."
        ),
        score_absent=True,
    ),
}


def get_convention(
    name: str, surface: Literal["voxels", "surfels"] = "voxels", distance_metric: DistanceMetric = "euclidean"
) -> Convention:
    """The convention ``name`` (``clinical``, ``transunet``, ``nnunet``, ``monai``) on the ``surface``
    representation, measuring distances as ``distance_metric``."""
    if name not in CONVENTIONS:
        raise ValueError(f"unknown convention {name!r}; choose from {sorted(CONVENTIONS)} (or 'cityscapes')")
    return CONVENTIONS[name].with_surface(surface).with_distance_metric(distance_metric)
