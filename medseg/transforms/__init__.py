"""medseg transforms: per-class distance and weight maps of segmentation labels for boundary-aware losses.

:class:`DistanceMapd` (MONAI dictionary transform, cached by ``CacheDataset``) and :class:`DistanceMap` (array
transform) write the maps, each with a record of its mode and spacing that the losses check
(:func:`read_map_record`, :func:`with_map_record`); :func:`distance_maps` computes them for a one-hot batch on the
fly. See ``docs/transforms.md`` for the conventions, backends and memory.
"""

from ._backends import BACKENDS, gpu_backend_available
from ._record import MAP_META_KEY, MapRecord, read_map_record, sidecar_key, with_map_record
from .distance import MODES, DistanceMap, DistanceMapD, DistanceMapd, DistanceMapDict, distance_maps

__all__ = [
    "BACKENDS",
    "MAP_META_KEY",
    "MODES",
    "DistanceMap",
    "DistanceMapD",
    "DistanceMapDict",
    "DistanceMapd",
    "MapRecord",
    "distance_maps",
    "gpu_backend_available",
    "read_map_record",
    "sidecar_key",
    "with_map_record",
]
