"""A dataset's fingerprint, as nnU-Net's experiment planning extracts it: spacings, shapes, intensities, classes.

Headers of every training case give spacings and shapes (fast on 1,000 cases: no voxel data is read). A seeded
sample of at most ``max_cases`` cases is loaded to measure the size of the non-zero region (nnU-Net crops to it),
the foreground intensities per channel (``voxels_per_case`` voxels drawn with replacement from each case's labelled
voxels, pooled over the sample: the statistics of CT normalisation) and the voxel count of every class. Everything
is in the axes the training pipeline sees: after reorientation to RAS (``Orientationd``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monai.transforms import Orientation
from tqdm import tqdm

from medseg.data.user_dataset import Case, UserDataset, check_case
from medseg.data.user_transforms import LoadCased

__all__ = ["PERCENTILES", "extract_fingerprint", "orientation_codes", "oriented"]

logger = logging.getLogger(__name__)

#: The foreground intensity percentiles nnU-Net records (the CT clip range and the median).
PERCENTILES = (0.5, 50.0, 99.5)


def orientation_codes(spatial_dims: int) -> str:
    """The axis codes the pipeline reorients to: ``RAS`` (3D) or ``RA`` (2D)."""
    return "RAS"[:spatial_dims]


def oriented(affine: np.ndarray, values: Sequence[float]) -> list[float]:
    """Per-axis ``values`` (shape or spacing, file voxel order) in the order of the RAS-reoriented axes."""
    order = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))[:, 0].astype(int)
    out = [0.0] * len(values)
    for source, target in enumerate(order):
        out[target] = float(values[source])
    return out


def _spacing(affine: np.ndarray) -> list[float]:
    """Voxel spacing per file axis from the affine's columns (what MONAI's ``Spacingd`` reads)."""
    rank = affine.shape[0] - 1
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:rank, :rank], axis=0).tolist()


def _sample(names: Sequence[str], max_cases: int, seed: int) -> list[str]:
    if len(names) <= max_cases:
        return list(names)
    chosen = np.random.default_rng(seed).choice(len(names), size=max_cases, replace=False)
    return [names[i] for i in sorted(chosen)]


def _intensity_stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return dict.fromkeys(("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5"), None)
    low, median, high = np.percentile(values, PERCENTILES)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(median),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentile_00_5": float(low),
        "percentile_99_5": float(high),
    }


def _analyse_case(case: Case, dataset: UserDataset, voxels: int, rng: np.random.Generator) -> dict[str, Any]:
    """Non-zero crop, foreground intensity sample per channel and class voxel counts of one case (RAS axes)."""
    data = LoadCased("image", num_channels=len(dataset.channel_names))({"image": [str(p) for p in case.images]})
    data = LoadCased("label")({**data, "label": str(case.label)})
    reorient = Orientation(orientation_codes(data["image"].ndim - 1), labels=None)
    image, label = np.asarray(reorient(data["image"])), np.asarray(reorient(data["label"]))[0]
    if not np.array_equal(label, np.round(label)):
        raise ValueError(f"label file {case.label} holds non-integer values; is it an image?")
    values, counts = np.unique(label.astype(np.int64), return_counts=True)
    unknown = sorted(set(values.tolist()) - set(dataset.label_values))
    if unknown:
        raise ValueError(
            f"label file {case.label} holds values {unknown} that field 'labels' of {dataset.dataset_json} does not "
            f"define (defined: {dataset.label_values})"
        )
    nonzero = np.any(image != 0, axis=0)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(nonzero)) if nonzero.any() else ()
    cropped_shape = [s.stop - s.start for s in box] if box else list(label.shape)
    foreground = label > 0
    if dataset.ignore_label is not None:
        foreground &= label != dataset.ignore_label
    samples = []
    for channel in image:
        pixels = channel[foreground]
        samples.append(rng.choice(pixels, voxels, replace=True) if pixels.size else np.empty(0, dtype=pixels.dtype))
    return {
        "shape_after_crop": cropped_shape,
        "relative_size_after_crop": float(np.prod(cropped_shape) / np.prod(label.shape)),
        "samples": samples,
        "class_voxels": dict(zip(values.tolist(), counts.tolist(), strict=True)),
    }


def extract_fingerprint(
    dataset: UserDataset, max_cases: int = 50, voxels_per_case: int = 10_000, seed: int = 1234, progress: bool = True
) -> dict[str, Any]:
    """The fingerprint of ``dataset``'s training cases (test cases never enter it).

    Returns a JSON-ready dict: ``spacings`` and ``shapes`` (every case, RAS axes, mm / voxels), ``sampled_cases``,
    ``shapes_after_crop`` (sampled cases), ``median_relative_size_after_crop``, ``intensity`` (per channel: mean,
    std, median, min, max, 0.5th and 99.5th percentiles of the pooled foreground sample), ``class_voxels`` and
    ``class_fraction`` (per label value, over the sampled cases) and ``class_presence`` (fraction of sampled cases
    holding the class).

    Raises:
        ValueError: a case has another channel count than dataset.json lists, files off one grid, or label values
            outside ``labels`` (the message names the file and the field).
    """
    names = sorted(dataset.training)
    spacings, shapes = [], []
    for name in tqdm(names, desc="reading headers", disable=not progress, leave=False):
        geometry = check_case(dataset.training[name], dataset)
        spacings.append(oriented(geometry.affine, _spacing(geometry.affine)))
        shapes.append([int(s) for s in oriented(geometry.affine, geometry.shape)])
    sampled = _sample(names, max_cases, seed)
    rng = np.random.default_rng(seed)
    analyses = [
        _analyse_case(dataset.training[n], dataset, voxels_per_case, rng)
        for n in tqdm(sampled, desc="sampling intensities", disable=not progress, leave=False)
    ]
    pooled = [np.concatenate([a["samples"][c] for a in analyses]) for c in range(len(dataset.channel_names))]
    class_voxels = {int(v): 0 for v in dataset.label_values}
    presence = dict.fromkeys(class_voxels, 0)
    for analysis in analyses:
        for value, count in analysis["class_voxels"].items():
            class_voxels[value] += int(count)
            presence[value] += 1
    total = max(sum(class_voxels.values()), 1)
    if len(sampled) < len(names):
        logger.info(
            "fingerprint: intensities and classes from %d of %d cases (seed %d)", len(sampled), len(names), seed
        )
    return {
        "num_cases": len(names),
        "sampled_cases": sampled,
        "voxels_per_case": voxels_per_case,
        "seed": seed,
        "spacings": spacings,
        "shapes": shapes,
        "shapes_after_crop": [a["shape_after_crop"] for a in analyses],
        "median_relative_size_after_crop": float(np.median([a["relative_size_after_crop"] for a in analyses])),
        "intensity": [_intensity_stats(p) for p in pooled],
        "class_voxels": {str(k): v for k, v in class_voxels.items()},
        "class_fraction": {str(k): v / total for k, v in class_voxels.items()},
        "class_presence": {str(k): v / len(analyses) for k, v in presence.items()},
    }
