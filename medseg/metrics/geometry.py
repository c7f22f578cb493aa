"""Do a prediction and its reference lie on one voxel grid? And, only on request, resample one onto the other.

Voxel-wise scores compare voxel ``i`` of the prediction with voxel ``i`` of the reference; that is right only when
both voxels sit at the same place in the patient. :func:`grid_mismatch` compares the grids:

- shape: equal;
- spacing: each axis within :data:`SPACING_RTOL` (relative; header rounding of float32 NIfTI fields);
- direction: each cosine within :data:`DIRECTION_ATOL` (absolute; 1e-4 turns the far corner of a 512-voxel
  axis by 0.05 voxel);
- origin: the offset of the first voxel, measured in reference voxels along the reference's axes, within
  :data:`ORIGIN_VOXEL_TOL` (1 % of a voxel along each axis).

:func:`resample_to_reference` puts a prediction on the reference grid by nearest-neighbour interpolation
(SimpleITK ``ResampleImageFilter``, label 0 outside the prediction's extent), the ``--resample-pred`` option.
"""

from __future__ import annotations

import numpy as np

from .reading import LabelImage

__all__ = ["DIRECTION_ATOL", "ORIGIN_VOXEL_TOL", "SPACING_RTOL", "grid_mismatch", "resample_to_reference"]

#: Relative tolerance of each spacing value.
SPACING_RTOL = 1e-4
#: Absolute tolerance of each direction cosine.
DIRECTION_ATOL = 1e-4
#: Tolerance of the origin offset, in reference voxels along each reference axis.
ORIGIN_VOXEL_TOL = 1e-2


def _fmt(values: np.ndarray | tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in np.ravel(values)) + ")"


def grid_mismatch(prediction: LabelImage, reference: LabelImage) -> str | None:
    """What differs between the two grids beyond the tolerances (module doc), in words; ``None`` when they agree."""
    if prediction.array.shape != reference.array.shape:
        return f"shape {prediction.array.shape} differs from the reference's {reference.array.shape}"
    pred_spacing, ref_spacing = np.asarray(prediction.spacing), np.asarray(reference.spacing)
    if not np.allclose(pred_spacing, ref_spacing, rtol=SPACING_RTOL, atol=0.0):
        return (
            f"spacing {_fmt(pred_spacing)} mm differs from the reference's {_fmt(ref_spacing)} mm "
            f"(relative tolerance {SPACING_RTOL:g})"
        )
    pred_direction, ref_direction = np.asarray(prediction.direction), np.asarray(reference.direction)
    if pred_direction.shape != ref_direction.shape or not np.allclose(
        pred_direction, ref_direction, rtol=0.0, atol=DIRECTION_ATOL
    ):
        return (
            f"direction cosines {_fmt(pred_direction)} differ from the reference's {_fmt(ref_direction)} "
            f"(tolerance {DIRECTION_ATOL:g}): the axes point elsewhere, e.g. a flipped or reoriented image"
        )
    # spacing is in array order (z, y, x); the direction's columns are index axes x, y, z
    index_spacing = ref_spacing[::-1]
    offset = np.asarray(prediction.origin, dtype=float) - np.asarray(reference.origin, dtype=float)
    try:
        in_voxels = np.linalg.solve(ref_direction * index_spacing, offset)
    except np.linalg.LinAlgError:
        in_voxels = offset / index_spacing
    if np.max(np.abs(in_voxels)) > ORIGIN_VOXEL_TOL:
        return (
            f"origin {_fmt(prediction.origin)} mm differs from the reference's {_fmt(reference.origin)} mm by "
            f"{_fmt(in_voxels)} voxels (tolerance {ORIGIN_VOXEL_TOL:g} voxel)"
        )
    return None


def _to_simpleitk(image: LabelImage):
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(image.array))
    out.SetSpacing(tuple(float(s) for s in reversed(image.spacing)))
    out.SetOrigin(tuple(float(o) for o in image.origin))
    out.SetDirection(tuple(float(d) for d in np.asarray(image.direction).ravel()))
    return out


def resample_to_reference(prediction: LabelImage, reference: LabelImage) -> LabelImage:
    """The prediction on the reference grid: nearest neighbour in physical space, 0 outside its extent.

    Raises:
        ValueError: a grid SimpleITK cannot take (non-orthonormal direction cosines), naming the files.
    """
    import SimpleITK as sitk

    if prediction.array.ndim != reference.array.ndim:
        raise ValueError(
            f"cannot resample the {prediction.array.ndim}D prediction {prediction.path} onto the "
            f"{reference.array.ndim}D reference {reference.path}"
        )
    try:
        moving, fixed = _to_simpleitk(prediction), _to_simpleitk(reference)
        resampled = sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0, moving.GetPixelID())
    except RuntimeError as err:
        message = str(err).strip().splitlines()[-1]
        raise ValueError(f"cannot resample {prediction.path} onto {reference.path}: {message}") from err
    return LabelImage(
        sitk.GetArrayFromImage(resampled), reference.spacing, prediction.path, reference.origin, reference.direction
    )
