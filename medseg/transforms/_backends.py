"""Euclidean distance transform backends for :mod:`medseg.transforms.distance`.

Every backend answers two questions about boolean voxel sets on a grid with physical ``spacing`` (one value per
array axis, in array axis order):

- :meth:`DistanceBackend.distance_to`: the distance from every voxel to the nearest voxel of a set;
- :meth:`DistanceBackend.two_sided`: for two disjoint sets, the distance from each voxel of one to the nearest
  voxel of the other (both directions at once).

Backends: ``edt`` (seung-lab's ``edt`` package: anisotropic, and its multi-label mode gives both directions in one
pass), ``scipy`` (``scipy.ndimage.distance_transform_edt``), ``sitk`` (SimpleITK's signed Maurer map) and
``cucim`` (cuCIM on CUDA tensors). ``auto`` picks cuCIM for CUDA tensors when cuCIM and CuPy are installed and
``edt`` otherwise; a CUDA tensor without cuCIM is computed on the CPU after a one-time warning.
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

BACKENDS = ("auto", "edt", "scipy", "sitk", "cucim")

_cupy, _has_cupy = optional_import("cupy")
_cucim_edt, _has_cucim = optional_import("cucim.core.operations.morphology", name="distance_transform_edt")
_warned_cpu_fallback = False


class DistanceBackend:
    """Distances between voxel sets; subclasses implement :meth:`distance_to` (and may speed up :meth:`two_sided`).

    Works on arrays of its namespace ``xp`` (numpy on the CPU, CuPy for cuCIM): boolean masks of one spatial shape in,
    float64 distances (millimetres when ``spacing`` is in millimetres) out. :meth:`asarray` and :meth:`to_tensor`
    move tensors in and out of that namespace.
    """

    name = ""
    xp: Any = np

    def asarray(self, tensor: torch.Tensor) -> Any:
        return np.ascontiguousarray(tensor.detach().cpu().numpy())

    def to_tensor(self, array: Any, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    def distance_to(self, target: Any, spacing: Sequence[float]) -> Any:
        """Distance from every voxel to the nearest voxel where ``target`` is True (0 on ``target``; not empty)."""
        raise NotImplementedError

    def two_sided(self, inside: Any, outside: Any, spacing: Sequence[float]) -> Any:
        """Distance from each ``inside`` voxel to the nearest ``outside`` one and vice versa; 0 on voxels in neither.

        Voxels in neither set are transparent: they bound neither set. Both sets must be non-empty.
        """
        to_outside = self.distance_to(outside, spacing)
        to_inside = self.distance_to(inside, spacing)
        return self.xp.where(inside, to_outside, self.xp.where(outside, to_inside, 0.0))


class EdtBackend(DistanceBackend):
    """seung-lab ``edt`` (Felzenszwalb-Huttenlocher, anisotropic, float32 internally): the fast CPU default.

    When the two sets of :meth:`two_sided` cover the grid, one multi-label call (labels 1 and 2) gives both
    directions: each voxel's distance to the nearest voxel with the other label.
    """

    name = "edt"

    def distance_to(self, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        distances = edt.edt(~target, anisotropy=tuple(spacing), black_border=False, parallel=1)
        return distances.astype(np.float64)

    def two_sided(self, inside: np.ndarray, outside: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        if not (inside | outside).all():
            return super().two_sided(inside, outside, spacing)
        labels = 1 + outside.astype(np.uint8)
        distances = edt.edt(labels, anisotropy=tuple(spacing), black_border=False, parallel=1)
        return distances.astype(np.float64)


class ScipyBackend(DistanceBackend):
    """``scipy.ndimage.distance_transform_edt`` (float64): the reference."""

    name = "scipy"

    def distance_to(self, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        return ndimage.distance_transform_edt(~target, sampling=tuple(spacing))


class SitkBackend(DistanceBackend):
    """SimpleITK's signed Maurer distance map: its positive side is the distance to the nearest target voxel."""

    name = "sitk"

    def distance_to(self, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        image = sitk.GetImageFromArray(target.astype(np.uint8))
        image.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # SimpleITK orders axes x, y, z
        signed = sitk.SignedMaurerDistanceMap(
            image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
        return np.maximum(sitk.GetArrayFromImage(signed).astype(np.float64), 0.0)


class CucimBackend(DistanceBackend):
    """cuCIM's ``distance_transform_edt`` on CUDA tensors (float64 distances), exchanged with torch via DLPack."""

    name = "cucim"
    xp = _cupy

    def asarray(self, tensor: torch.Tensor) -> Any:
        return _cupy.from_dlpack(tensor.detach().contiguous())

    def to_tensor(self, array: Any, device: torch.device) -> torch.Tensor:
        return torch.from_dlpack(_cupy.ascontiguousarray(array)).to(device)

    def distance_to(self, target: Any, spacing: Sequence[float]) -> Any:
        return _cucim_edt(~target, sampling=tuple(spacing), float64_distances=True)


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
