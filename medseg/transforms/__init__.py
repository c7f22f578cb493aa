"""medseg transforms: per-class distance and weight maps of segmentation labels for boundary-aware losses.

:class:`DistanceMapd` (MONAI dictionary transform, cached by ``CacheDataset``) and :class:`DistanceMap` (array
transform) write the maps; :func:`distance_maps` computes them for a one-hot batch on the fly. See
``docs/transforms.md`` for the conventions, backends and memory.
"""

from ._backends import BACKENDS, gpu_backend_available
from .distance import MODES, DistanceMap, DistanceMapD, DistanceMapd, DistanceMapDict, distance_maps

__all__ = [
    "BACKENDS",
    "MODES",
    "DistanceMap",
    "DistanceMapD",
    "DistanceMapDict",
    "DistanceMapd",
    "distance_maps",
    "gpu_backend_available",
]
