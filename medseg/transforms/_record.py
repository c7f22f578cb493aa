"""What a distance map records about itself: its mode, its spacing and the parameters that shape its values.

A loss can only check a map it can read the record of. :class:`~medseg.transforms.DistanceMap` writes the record
into a MetaTensor map's ``meta[MAP_META_KEY]``; :class:`~medseg.transforms.DistanceMapd` also writes it into the
sidecar dict ``f"{output_key}_meta_dict"`` (MONAI's ``PostFix.meta``), which survives what drops a MetaTensor's
meta (``EnsureTyped(track_meta=False)``, numpy labels, batchgenerators). DataLoader collation turns either into
per-item lists (one mode per item, a ``(B, n)`` spacing); :func:`with_map_record` puts a sidecar's record onto
the batch's map, as :class:`medseg.engine.PrepareBatchWithAux` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import MetaTensor
from monai.utils import PostFix

from ._maps import MapSettings

__all__ = ["MAP_META_KEY", "MapRecord", "map_record", "read_map_record", "sidecar_key", "with_map_record"]

#: key of the record in a map's MetaTensor meta and in its sidecar meta dict
MAP_META_KEY = "distance_map"


def sidecar_key(output_key: str) -> str:
    """The batch key of a map's sidecar meta dict: ``"dist"`` -> ``"dist_meta_dict"`` (MONAI's ``PostFix.meta``)."""
    return PostFix.meta(output_key)


def map_record(settings: MapSettings, spacing: tuple[float, ...]) -> dict[str, Any]:
    """The record of one map: ``mode``, ``spacing`` (mm per spatial axis, float64 tensor; 1 = voxel units), and
    ``bins``/``truncation`` (``quantized``) or ``w0``/``sigma``/``class_balance`` (``unet_weight``)."""
    record: dict[str, Any] = {"mode": settings.mode, "spacing": torch.tensor(spacing, dtype=torch.float64)}
    if settings.mode == "quantized":
        record |= {"bins": settings.bins, "truncation": settings.truncation}
    elif settings.mode == "unet_weight":
        record |= {"w0": settings.w0, "sigma": settings.sigma, "class_balance": settings.class_balance}
    return record


@dataclass(frozen=True)
class MapRecord:
    """A map's record read back, one entry per item (one in all for an unbatched or uniform record).

    ``modes``: the ``DistanceMap`` mode of each item. ``spacings``: ``(items, n)`` float64, or ``None`` when not
    recorded. ``params``: other recorded parameters (e.g. ``bins``), a tuple of values per name.
    """

    modes: tuple[str, ...]
    spacings: torch.Tensor | None
    params: dict[str, tuple[Any, ...]]


def _values(value: Any) -> tuple[Any, ...]:
    """One python value per item from a scalar, a sequence or a collated tensor."""
    if isinstance(value, torch.Tensor):
        return tuple(value.flatten().tolist())
    if isinstance(value, list | tuple):
        return tuple(v.item() if isinstance(v, torch.Tensor) else v for v in value)
    return (value,)


def read_map_record(value: Any) -> MapRecord | None:
    """The record a map carries in its MetaTensor meta (collated or not), or ``None`` (a plain tensor, no record)."""
    meta = value.meta if isinstance(value, MetaTensor) else None
    record = meta.get(MAP_META_KEY) if isinstance(meta, Mapping) else None
    if not isinstance(record, Mapping) or "mode" not in record:
        return None
    modes = tuple(str(m) for m in _values(record["mode"]))
    spacings = None
    if record.get("spacing") is not None:
        spacings = torch.as_tensor(record["spacing"], dtype=torch.float64)
        spacings = spacings.reshape(-1, spacings.shape[-1]) if spacings.ndim else spacings.reshape(1, 1)
    params = {name: _values(v) for name, v in record.items() if name not in ("mode", "spacing")}
    return MapRecord(modes, spacings, params)


def with_map_record(value: torch.Tensor, meta: Any) -> torch.Tensor:
    """``value`` carrying the record of the sidecar meta dict ``meta`` (e.g. ``batch["dist_meta_dict"]``).

    Returns a MetaTensor (sharing ``value``'s memory) whose meta holds the record; ``value`` unchanged when
    ``meta`` holds no record or ``value`` already carries one.
    """
    record = meta.get(MAP_META_KEY) if isinstance(meta, Mapping) else None
    if record is None or read_map_record(value) is not None:
        return value
    own_meta = value.meta if isinstance(value, MetaTensor) else {}
    out = MetaTensor(value, meta={**own_meta, MAP_META_KEY: record})
    out.is_batch = value.is_batch if isinstance(value, MetaTensor) else isinstance(record.get("mode"), list | tuple)
    return out
