"""Checks of a cached aux map against the loss that reads it: mode, spacing and mode parameters from its record.

:class:`~medseg.transforms.DistanceMap` records how each map was made (``medseg.transforms._record``); a map made
in another mode, at another spacing than the loss was given, or with other bins, would give a wrong number without
any error (a ``penalty`` map read as ``signed`` is in range), so it raises here. A plain tensor carries no record
and is taken as it is: its mode is the caller's responsibility (the losses' value-range checks still apply).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor

from ..transforms._record import MapRecord, read_map_record

__all__ = ["checked_map"]

_RTOL = 1e-6


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    return abs(float(a) - float(b)) <= _RTOL * max(1.0, abs(float(b)))


def _spacing_row(spacing: float | Sequence[float], n: int) -> torch.Tensor:
    values = torch.as_tensor(spacing, dtype=torch.float64).flatten()
    return values.expand(n) if values.numel() == 1 else values


def _check_spacing(record: MapRecord, name: str, key: str, spacing: float | Sequence[float]) -> None:
    if record.spacings is None:
        return
    expected = _spacing_row(spacing, record.spacings.shape[1])
    for item, row in enumerate(record.spacings):
        if row.shape != expected.shape or not torch.allclose(row, expected, rtol=_RTOL, atol=0.0):
            raise ValueError(
                f"{name} was given spacing={tuple(expected.tolist())} mm, but the {key!r} map of item {item} was "
                f"made at spacing {tuple(row.tolist())} (1 = voxel units): give DistanceMapd and the loss the same "
                "spacing, or leave the loss's spacing at None (a cached map carries its own)"
            )


def checked_map(
    value: torch.Tensor,
    name: str,
    key: str,
    mode: str,
    spacing: float | Sequence[float] | None = None,
    params: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, MapRecord | None]:
    """The map as a plain tensor and its record, after checking the record against what loss ``name`` reads.

    Raises ``ValueError`` when the record names another ``mode``, another spacing than ``spacing`` (the loss's,
    when it has one), or other values of ``params`` (e.g. ``{"bins": 5}``). Without a record: ``(value, None)``.
    """
    if not isinstance(value, MetaTensor):
        return value, None
    record = read_map_record(value)
    value = value.as_tensor()
    if record is None:
        return value, None
    other = sorted({m for m in record.modes if m != mode})
    if other:
        raise ValueError(
            f"{name} reads the {key!r} map of DistanceMapd mode {mode!r}, but this map was made in mode "
            f"{', '.join(repr(m) for m in other)}: make it with DistanceMapd(keys='label', mode={mode!r}, "
            f"output_key={key!r}) (terms of a CompoundLoss that read {key!r} in different modes cannot share one map)"
        )
    for param, expected in (params or {}).items():
        found = record.params.get(param, ())
        if any(not _close(v, expected) for v in found):
            made = ", ".join(f"{p}={record.params[p][0]!r}" for p in params or {} if p in record.params)
            wanted = ", ".join(f"{p}={v!r}" for p, v in (params or {}).items())
            raise ValueError(
                f"{name} reads the {key!r} map with {wanted}, but it was made with DistanceMapd(mode={mode!r}, "
                f"{made}): give both the same values"
            )
    if spacing is not None:
        _check_spacing(record, name, key, spacing)
    return value, record
