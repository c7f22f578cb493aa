"""Read and write the image files of user datasets in any format nnU-Net accepts, with their geometry.

NIfTI (``.nii.gz``, ``.nii``) is read with MONAI's ``NibabelReader``; NRRD, MHA/MHD, GIPL, PNG, BMP and TIFF with
:class:`SimpleITKReader`, a MONAI ``ImageReader`` over SimpleITK (MONAI's own ``ITKReader`` needs the ``itk``
package). Both give arrays in the file's voxel order (x, y[, z]) with channels last and a RAS affine, so MONAI's
spatial transforms and ``Invertd`` treat every format alike. :func:`read_geometry` reads headers only (fast on
1,000 cases); :func:`write_label_map` writes a prediction in the geometry of a reference file of the case, as
nnU-Net does (same grid, spacing, origin, direction; the reference's format).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader, MetaTensor, NibabelReader
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImage
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = [
    "NIFTI_ENDINGS",
    "SITK_ENDINGS",
    "SUPPORTED_ENDINGS",
    "Geometry",
    "SimpleITKReader",
    "file_ending",
    "load_image",
    "read_geometry",
    "write_label_map",
]

NIFTI_ENDINGS = (".nii.gz", ".nii")
SITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz", ".png", ".bmp", ".tif", ".tiff")
SUPPORTED_ENDINGS = NIFTI_ENDINGS + SITK_ENDINGS


def file_ending(path: str | Path) -> str:
    """The known file ending of ``path`` (``.nii.gz`` rather than ``.gz``), lower case; raises for unknown ones."""
    name = Path(path).name.lower()
    for ending in sorted(SUPPORTED_ENDINGS, key=len, reverse=True):
        if name.endswith(ending):
            return ending
    raise ValueError(f"{path}: unsupported file ending (supported: {', '.join(SUPPORTED_ENDINGS)})")


def _sitk_affine(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float], dim: int):
    """RAS affine ``(sr + 1) × (sr + 1)`` from SimpleITK's LPS geometry; ``sr`` = spatial rank (at most 3)."""
    sr = min(dim, 3)
    cosines = np.asarray(direction, dtype=np.float64).reshape(dim, dim)[:sr, :sr]
    affine = np.eye(sr + 1)
    affine[:sr, :sr] = cosines @ np.diag(np.asarray(spacing[:sr], dtype=np.float64))
    affine[:sr, -1] = np.asarray(origin[:sr], dtype=np.float64)
    return orientation_ras_lps(affine)


class SimpleITKReader(ImageReader):
    """MONAI image reader over SimpleITK: arrays in (x, y[, z]) order, channels (vector pixels, 4th axis) last.

    The affine is converted from ITK's LPS to RAS, as MONAI's ``ITKReader`` does, so the output matches
    ``NibabelReader``'s for the same image. Several files are stacked on a new first (channel) axis.
    """

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        try:
            return all(file_ending(f) in SITK_ENDINGS for f in ensure_tuple(filename))
        except ValueError:
            return False

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any):
        images = [sitk.ReadImage(str(f)) for f in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        arrays, meta = [], {}
        for image in img if isinstance(img, list | tuple) else [img]:  # a SimpleITK image is itself iterable
            dim, components = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
            array = sitk.GetArrayFromImage(image)  # (t, z, y, x[, components])
            spatial = min(dim, 3)
            reverse = list(reversed(range(dim)))
            array = array.transpose([*reverse, *range(dim, array.ndim)])  # (x, y, z, t[, components])
            if dim == 4 and components > 1:
                raise ValueError(f"{image.GetDimension()}D image with vector pixels is not supported")
            header = {
                MetaKeys.AFFINE: _sitk_affine(image.GetSpacing(), image.GetOrigin(), image.GetDirection(), dim),
                MetaKeys.SPATIAL_SHAPE: np.asarray(image.GetSize()[:spatial]),
                MetaKeys.SPACE: SpaceKeys.RAS,
                "spacing": np.asarray(image.GetSpacing()[:spatial]),
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if (dim == 4 or components > 1) else float("nan"),
            }
            header[MetaKeys.ORIGINAL_AFFINE] = header[MetaKeys.AFFINE].copy()
            arrays.append(array)
            meta = meta or header
        if len(arrays) == 1:
            return arrays[0], meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta


def _reader(path: str | Path) -> ImageReader:
    return NibabelReader() if file_ending(path) in NIFTI_ENDINGS else SimpleITKReader()


def load_image(path: str | Path, dtype: Any = np.float32) -> MetaTensor:
    """One file as a channel-first MetaTensor ``(C, *spatial)`` with its RAS affine; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file does not exist: {path}")
    loader = LoadImage(reader=_reader(path), image_only=True, ensure_channel_first=True, dtype=dtype)
    try:
        image = loader(str(path))
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"cannot read {path}: {type(err).__name__}: {first_line}") from err
    if image.ndim == 3 and image.affine.shape[0] == 4:  # a 2D NIfTI: give it the singleton axis its affine has
        image = image.unsqueeze(-1)
    return image


@dataclass(frozen=True)
class Geometry:
    """What a file's header says: spatial ``shape`` and ``spacing`` (file voxel order), RAS ``affine``, ``channels``."""

    path: Path
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    affine: np.ndarray
    channels: int


def _nifti_geometry(path: Path) -> Geometry:
    image = nib.load(str(path))
    shape = tuple(int(s) for s in image.shape)
    channels = 1
    if len(shape) > 3:  # (x, y, z, c) or nnU-Net/ITK's (x, y, z, 1, c)
        channels = int(np.prod(shape[3:]))
        shape = shape[:3]
    shape = shape + (1,) * (3 - len(shape))  # a 2D NIfTI is an x × y × 1 volume (its affine is 3D)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    zooms = zooms + (1.0,) * (3 - len(zooms))
    return Geometry(path, shape, zooms, np.asarray(image.affine, dtype=np.float64), channels)


def _sitk_geometry(path: Path) -> Geometry:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    dim, size = reader.GetDimension(), reader.GetSize()
    spatial = min(dim, 3)
    channels = reader.GetNumberOfComponents() * (int(size[3]) if dim == 4 else 1)
    affine = _sitk_affine(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), dim)
    spacing = tuple(float(s) for s in reader.GetSpacing()[:spatial])
    return Geometry(path, tuple(int(s) for s in size[:spatial]), spacing, affine, channels)


def read_geometry(path: str | Path) -> Geometry:
    """The header of ``path`` (no voxel data read): shape, spacing, RAS affine and channel count.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it cannot be read; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file does not exist: {path}")
    try:
        return _nifti_geometry(path) if file_ending(path) in NIFTI_ENDINGS else _sitk_geometry(path)
    except Exception as err:
        raise ValueError(f"cannot read the header of {path}: {type(err).__name__}: {err}") from err


def _label_dtype(labels: np.ndarray) -> type:
    return np.uint8 if int(labels.max(initial=0)) < 256 else np.uint16


def _atomic_target(out_path: Path) -> Path:
    """A temporary file beside ``out_path`` with the same ending (writers choose the format by the ending)."""
    handle, name = tempfile.mkstemp(prefix=".partial-", suffix=file_ending(out_path), dir=out_path.parent)
    os.close(handle)
    return Path(name)


def _write_nifti(labels: np.ndarray, reference: Path, target: Path) -> None:
    ref = nib.load(str(reference))
    labels = labels.reshape(ref.shape[:3])  # the reference's own spatial axes (x × y for a 2D NIfTI)
    image = nib.Nifti1Image(labels.astype(_label_dtype(labels)), ref.affine)
    header = ref.header
    image.set_qform(ref.get_qform(), code=int(header["qform_code"]))
    image.set_sform(ref.get_sform(), code=int(header["sform_code"]))
    image.header.set_xyzt_units(*header.get_xyzt_units())
    nib.save(image, str(target))


def _write_sitk(labels: np.ndarray, reference: Path, target: Path) -> None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(reference))
    reader.ReadImageInformation()
    dim = reader.GetDimension()
    spatial = labels.ndim
    image = sitk.GetImageFromArray(labels.astype(_label_dtype(labels)).transpose(list(reversed(range(spatial)))))
    image.SetSpacing(reader.GetSpacing()[:spatial])
    image.SetOrigin(reader.GetOrigin()[:spatial])
    image.SetDirection(np.asarray(reader.GetDirection()).reshape(dim, dim)[:spatial, :spatial].ravel().tolist())
    sitk.WriteImage(image, str(target), True)


def write_label_map(labels: np.ndarray, reference: str | Path, out_path: str | Path) -> Path:
    """Write ``labels`` (file voxel order, as :func:`load_image` reads) in the geometry of ``reference``.

    NIfTI keeps the reference's affine, qform/sform codes and units (uint8, or uint16 above 255 labels); other
    formats are written with SimpleITK, copying spacing, origin and direction. A singleton axis that the reference
    has and ``labels`` lacks (2D data stored as ``x × y × 1``) is restored. The file is written under a temporary
    name and renamed, so an interrupted run never leaves a half-written prediction.

    Raises:
        ValueError: the shape of ``labels`` does not fit the reference's; the message names both.
    """
    reference, out_path = Path(reference), Path(out_path)
    geometry = read_geometry(reference)
    labels = np.asarray(labels)
    if labels.shape != geometry.shape:
        if [s for s in labels.shape if s != 1] != [s for s in geometry.shape if s != 1]:
            raise ValueError(
                f"prediction for {out_path.name} has shape {labels.shape}, but its reference {reference} has "
                f"{geometry.shape}: the prediction was not brought back to the input's grid"
            )
        labels = labels.reshape(geometry.shape)
    if np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.round(labels)):
        raise ValueError(f"prediction for {out_path.name} holds non-integer values: argmax it first")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    target = _atomic_target(out_path)
    try:
        if file_ending(reference) in NIFTI_ENDINGS and file_ending(out_path) in NIFTI_ENDINGS:
            _write_nifti(labels, reference, target)
        else:
            _write_sitk(labels, reference, target)
        target.replace(out_path)
    finally:
        target.unlink(missing_ok=True)
    return out_path
