"""Euclidean distance transform backends for :mod:`medseg.transforms.distance`.

Every backend answers two questions on a grid with physical ``spacing`` (one value per array axis, in array axis
order), in float32 millimetres when ``spacing`` is in millimetres:

- :meth:`DistanceBackend.distance_to`: the distance from every voxel to the nearest voxel of a boolean set;
- :meth:`DistanceBackend.label_distances`: for a label map, the distance from every voxel to the nearest voxel of
  another label (the inside distance of every class at once).

Backends: ``edt`` (seung-lab's ``edt`` package, anisotropic: one multi-label pass answers
:meth:`~DistanceBackend.label_distances`, and a small set's distances are computed inside its bounding box by
:mod:`._cropped_edt`), ``scipy`` (``scipy.ndimage.distance_transform_edt``), ``sitk`` (SimpleITK's signed Maurer
map) and ``cucim`` (cuCIM on CUDA tensors). ``auto`` picks cuCIM for CUDA tensors when cuCIM and CuPy are installed
and ``edt`` otherwise; a CUDA tensor without cuCIM is computed on the CPU after a one-time warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import edt
import numpy as np
import SimpleITK as sitk
import torch
from monai.utils import optional_import
from scipy import ndimage

from ._cropped_edt import bounding_box, squared_distance_to, worth_cropping

BACKENDS = ("auto", "edt", "scipy", "sitk", "cucim")

_cupy, _has_cupy = optional_import("cupy")
_cucim_edt, _has_cucim = optional_import("cucim.core.operations.morphology", name="distance_transform_edt")
_warned_cpu_fallback = False


class DistanceBackend:
    """Distances between voxel sets; subclasses implement :meth:`distance_to` (and may speed up
    :meth:`label_distances`).

    Works on arrays of its namespace ``xp`` (numpy on the CPU, CuPy for cuCIM): boolean masks or integer label maps
    of one spatial shape in, float32 distances out. :meth:`asarray` and :meth:`to_tensor` move tensors in and out
    of that namespace.
    """

    name = ""
    xp: Any = np

    def asarray(self, tensor: torch.Tensor) -> Any:
        return np.ascontiguousarray(tensor.detach().cpu().numpy())

    def to_tensor(self, array: Any, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    def empty(self, shape: tuple[int, ...]) -> Any:
        """A float32 array for the maps, allocated by torch: numpy asks the kernel for transparent huge pages on
        large arrays, and where the kernel compacts memory for them on first touch (THP ``defrag=madvise``, a
        common default) filling a cached map's fresh memory took five times longer (0.43 s against 0.08 s for
        200 MB, measured)."""
        return torch.empty(shape, dtype=torch.float32).numpy()

    def distance_to(self, target: Any, spacing: Sequence[float]) -> Any:
        """Distance from every voxel to the nearest voxel where ``target`` is True (0 on ``target``; not empty)."""
        raise NotImplementedError

    def label_distances(self, labels: Any, spacing: Sequence[float]) -> Any:
        """Distance from every voxel to the nearest voxel with another value of ``labels`` (inf where there is none).

        On a voxel of class c this is c's inside distance :math:`d_{in}`. Here one :meth:`distance_to` per label.
        """
        out = self.xp.full(labels.shape, np.inf, dtype=np.float32)
        for value in self.xp.unique(labels).tolist():
            region = labels == value
            if not region.all():
                out[region] = self.distance_to(~region, spacing)[region]
        return out


class EdtBackend(DistanceBackend):
    """seung-lab ``edt`` (Felzenszwalb-Huttenlocher, anisotropic, float32): the fast CPU default.

    :meth:`label_distances` is one multi-label ``edt`` pass. :meth:`distance_to` computes a set whose bounding box
    is small (an organ) axis by axis inside that box (:func:`._cropped_edt.squared_distance_to`, several times
    faster than a full pass), and a large set (the background) with ``edt`` on the box around its complement only.
    """

    name = "edt"

    def distance_to(self, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        box = bounding_box(target)
        if box is not None and worth_cropping(box, target.shape):
            return np.sqrt(squared_distance_to(target, spacing, box))
        complement = bounding_box(~target)
        out = np.zeros(target.shape, dtype=np.float32)
        if complement is None:
            return out
        # the nearest target voxel of any voxel in this box lies in it: clamping a target voxel outside onto the
        # box moves it closer, and onto the layer grown around the complement's box, which holds only target voxels
        grown = tuple(
            slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(complement, target.shape, strict=True)
        )
        away = np.ascontiguousarray(~target[grown]).view(np.uint8)  # edt's uint8 path is twice its bool path
        out[grown] = edt.edt(away, anisotropy=tuple(spacing), black_border=False, parallel=1)
        return out

    def label_distances(self, labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        # edt treats label 0 as background (distance 0, a boundary of every other label): shift every label up
        if labels.min() == 0:
            labels = labels.astype(np.uint32) + 1
        return edt.edt(labels, anisotropy=tuple(spacing), black_border=False, parallel=1)

    def label_distances_squared(self, labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """:meth:`label_distances` squared (no square root taken); ``labels`` must hold no 0 (edt's background)."""
        return edt.edtsq(labels, anisotropy=tuple(spacing), black_border=False, parallel=1)

    def two_sided_squared(self, labels: np.ndarray, value: int, spacing: Sequence[float]) -> np.ndarray:
        """Squared distance from every voxel of ``labels == value`` to the nearest voxel of another value, and from
        every other voxel to the nearest voxel of ``value``: both sides of that region's boundary in one two-label
        ``edt`` pass (about the cost of one binary pass)."""
        two = np.not_equal(labels, value).view(np.uint8) + np.uint8(1)  # 1 on the region, 2 elsewhere
        return edt.edtsq(two, anisotropy=tuple(spacing), black_border=False, parallel=1)


class ScipyBackend(DistanceBackend):
    """``scipy.ndimage.distance_transform_edt`` (float64 inside, float32 out): the reference."""

    name = "scipy"

    def distance_to(self, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        return ndimage.distance_transform_edt(~target, sampling=tuple(spacing)).astype(np.float32)


class SitkBackend(DistanceBackend):
    """SimpleITK's signed Maurer distance map: its positive side is the distance to the nearest target voxel."""

    name = "sitk"

    def distance_to(self, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        image = sitk.GetImageFromArray(target.astype(np.uint8))
        image.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # SimpleITK orders axes x, y, z
        signed = sitk.SignedMaurerDistanceMap(
            image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
        return np.maximum(sitk.GetArrayFromImage(signed), 0.0).astype(np.float32)


class CucimBackend(DistanceBackend):
    """cuCIM's ``distance_transform_edt`` on CUDA tensors, exchanged with torch via DLPack."""

    name = "cucim"
    xp = _cupy

    def asarray(self, tensor: torch.Tensor) -> Any:
        return _cupy.from_dlpack(tensor.detach().contiguous())

    def to_tensor(self, array: Any, device: torch.device) -> torch.Tensor:
        return torch.from_dlpack(_cupy.ascontiguousarray(array)).to(device)

    def empty(self, shape: tuple[int, ...]) -> Any:
        return _cupy.empty(shape, dtype=_cupy.float32)

    def distance_to(self, target: Any, spacing: Sequence[float]) -> Any:
        return _cucim_edt(~target, sampling=tuple(spacing), float64_distances=False).astype(_cupy.float32)


_CPU_BACKENDS: dict[str, type[DistanceBackend]] = {"edt": EdtBackend, "scipy": ScipyBackend, "sitk": SitkBackend}


def gpu_backend_available() -> bool:
    """Whether cuCIM and CuPy are importable (the GPU path of ``backend="auto"``)."""
    return bool(_has_cupy and _has_cucim)


def get_backend(name: str, device: torch.device) -> DistanceBackend:
    """The backend called ``name`` for tensors on ``device``.

    ``auto``: cuCIM for CUDA tensors when available, else ``edt`` (with a one-time warning for CUDA tensors).
    ``cucim`` asks for the GPU explicitly and raises for CPU tensors; without cuCIM it falls back like ``auto``.
    """
    global _warned_cpu_fallback
    if name not in BACKENDS:
        raise ValueError(f"unknown distance backend {name!r}; choose one of {BACKENDS}")
    if name in _CPU_BACKENDS:
        return _CPU_BACKENDS[name]()
    on_gpu = torch.device(device).type == "cuda"
    if name == "cucim" and not on_gpu:
        raise ValueError(f"backend 'cucim' computes on CUDA tensors, got a tensor on {device}; use 'auto' or 'edt'")
    if on_gpu and gpu_backend_available():
        return CucimBackend()
    if on_gpu and not _warned_cpu_fallback:
        warnings.warn(
            "cuCIM/CuPy are not installed: distance maps of CUDA tensors are computed on the CPU with 'edt' and "
            "copied back (install cucim and cupy for the GPU path)",
            stacklevel=3,
        )
        _warned_cpu_fallback = True
    return EdtBackend()
