"""Read a label map file whole, with its grid, or refuse it with a message that names the file.

- NIfTI (``.nii``, ``.nii.gz``) is read with nibabel from the complete file: the whole gzip stream is
  decompressed (a cut stream or a bad CRC raises) and the data must fill the size the header gives
  (``vox_offset + prod(dim) * bitpix / 8``). SimpleITK is not used for NIfTI: it fills a truncated file with
  zeros and reads a NaN voxel as 0, without a word.
- NRRD and MetaImage (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) are read with SimpleITK, which refuses short data.
- PNG is read with PIL as the Cityscapes scripts read it (palette images give their indices; spacing 1).

Values: integers, booleans, or floats that all hold whole numbers (a float label file is fine); NaN, ±inf or a
fraction is refused. The grid is given as ITK gives it, whatever the reader: ``spacing`` in array axis order
(SimpleITK's ``(z, y, x)``), ``origin`` (mm) and ``direction`` (cosines; column ``j`` = index axis ``j``,
``x`` first) in LPS physical space. nibabel's RAS affine is turned into it (x and y negated), so a NIfTI
prediction and an NRRD reference compare in one frame.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LabelImage", "NotALabelMap", "Unreadable", "affine_norms", "read_label_image"]


@dataclass(frozen=True)
class LabelImage:
    """A label map and its grid.

    Attributes:
        array: integer labels, SimpleITK axis order (``(z, y, x)`` for 3D).
        spacing: voxel size per array axis, mm.
        path: the file.
        origin: physical position of the first voxel's centre (LPS, mm; ``x`` first).
        direction: ``ndim × ndim`` direction cosines (LPS), column ``j`` for index axis ``j`` (``x`` first).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    path: Path
    origin: tuple[float, ...] | None = None
    direction: np.ndarray | None = None

    def __post_init__(self) -> None:
        ndim = self.array.ndim
        if self.origin is None:
            object.__setattr__(self, "origin", (0.0,) * ndim)
        if self.direction is None:
            object.__setattr__(self, "direction", np.eye(ndim))


class NotALabelMap(ValueError):
    """A file that reads fine but holds no label map (colour or vector pixels, a fraction, NaN)."""


class Unreadable(ValueError):
    """A file that cannot be read whole: truncated, damaged, or of an unexpected shape."""


def _as_label_array(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise NotALabelMap(f"{path} holds {array.dtype} values; expected an integer label map")
    finite = np.isfinite(array)
    if not finite.all():
        count = int(array.size - np.count_nonzero(finite))
        raise NotALabelMap(
            f"{path} holds {count} NaN or infinite voxel(s); a label map holds whole numbers only (re-export it)"
        )
    if not np.array_equal(array, np.round(array)):
        raise NotALabelMap(f"{path} holds non-integer values; is it an image or a probability map, not a label map?")
    return array.astype(np.int32)


def _nifti_bytes(path: Path) -> bytes:
    """The whole (decompressed) NIfTI file; a cut or damaged gzip stream raises."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise Unreadable(f"{path} is truncated or damaged (gzip: {err}); write the file again") from err


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...], np.ndarray]:
    import nibabel as nib

    data = _nifti_bytes(path)
    header_sizes = {int.from_bytes(data[:4], order) for order in ("little", "big")}
    image = (nib.Nifti2Image if 540 in header_sizes else nib.Nifti1Image).from_bytes(data)
    header = image.header
    expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if len(data) < expected:
        raise Unreadable(
            f"{path} is truncated: its header describes {expected} bytes of header and data, the file holds "
            f"{len(data)}; write the file again"
        )
    array = np.asanyarray(image.dataobj)
    ndim = array.ndim
    if ndim not in (2, 3):
        raise Unreadable(f"{path} has shape {array.shape}; expected a 2D or 3D label map")
    lps = np.diag([-1.0, -1.0, 1.0])
    linear = lps @ image.affine[:3, :3] / affine_norms(image.affine)
    origin = lps @ image.affine[:3, 3]
    zooms = header.get_zooms()[:ndim]
    # SimpleITK's order: the reverse of the file's (x, y, z)
    array = np.ascontiguousarray(array.transpose(tuple(reversed(range(ndim)))))
    return array, tuple(reversed(zooms)), tuple(origin[:ndim]), linear[:ndim, :ndim]


def affine_norms(affine: np.ndarray) -> np.ndarray:
    """Column norms of a 4 × 4 affine's linear part (voxel sizes along the index axes); 1 for a zero column."""
    norms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return np.where(norms > 0, norms, 1.0)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("1", "L", "P", "I", "I;16"):
            raise NotALabelMap(f"{path} is a {image.mode} image; expected a single-channel label PNG")
        return np.array(image)


def _read_with_simpleitk(path: Path) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...], np.ndarray]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        components = image.GetNumberOfComponentsPerPixel()
        raise NotALabelMap(f"{path} has {components} components per voxel; expected a label map")
    ndim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(ndim, ndim)
    return (
        sitk.GetArrayFromImage(image),
        tuple(reversed(image.GetSpacing())),
        tuple(image.GetOrigin()),
        direction,
    )


def _reader_message(err: Exception) -> str:
    """The informative lines of a reader's error (ITK's start with the source file and line; dropped)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Exception thrown in SimpleITK")]
    return " ".join(lines[-3:])


def read_label_image(path: str | Path) -> LabelImage:
    """Read a label map whole, with its grid (module doc); every error names the file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is truncated, damaged or unreadable, has colour/vector pixels, is not 2D/3D, or holds
            NaN, infinite or non-integer values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file does not exist: {path}")
    name = path.name.lower()
    try:
        if name.endswith(".png"):
            array = _read_png(path)
            spacing, origin, direction = (1.0, 1.0), (0.0, 0.0), np.eye(2)
        elif name.endswith((".nii", ".nii.gz")):
            array, spacing, origin, direction = _read_nifti(path)
        else:
            array, spacing, origin, direction = _read_with_simpleitk(path)
    except (NotALabelMap, Unreadable):
        raise
    except Exception as err:  # any reader failure (cut data, bad header, ...) becomes one message naming the file
        raise ValueError(
            f"cannot read {path} (truncated or damaged?): {type(err).__name__}: {_reader_message(err)}"
        ) from err
    if array.ndim not in (2, 3):
        raise Unreadable(f"{path} has shape {array.shape}; expected a 2D or 3D label map")
    return LabelImage(
        _as_label_array(array, path),
        tuple(float(s) for s in spacing),
        path,
        tuple(float(o) for o in origin),
        np.asarray(direction, dtype=float),
    )
