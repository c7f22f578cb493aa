"""The arithmetic behind :mod:`medseg.transforms.distance`: label parsing and per-mode maps on numpy/CuPy arrays.

Everything here works on arrays of the backend's namespace (``xp``: numpy, or CuPy for cuCIM), not on torch tensors:
one code path for CPU and GPU, and no torch intra-op thread pool, which made these per-class element-wise steps
about ten times slower than numpy's on a busy 2-core machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ._backends import BACKENDS, DistanceBackend
from ._cropped_edt import squared_distance_to, worth_cropping

MODES = ("signed", "unsigned", "penalty", "rrw", "quantized", "unet_weight")
OUTPUT_DTYPES = (torch.float16, torch.float32, torch.float64)
# edt computes in float32: a distance this close (in bin widths) above a bin edge is counted in the lower bin, so
# that every backend quantises a voxel lying exactly on an edge the same way.
_BIN_EDGE_TOLERANCE = 1e-4
Spacing = float | Sequence[float] | torch.Tensor | np.ndarray
NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


@dataclass(frozen=True)
class MapSettings:
    """Mode and its parameters, validated once."""

    mode: str
    truncation: float
    bins: int
    w0: float
    sigma: float
    class_balance: bool
    backend: str
    dtype: torch.dtype

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown distance map mode {self.mode!r}; choose one of {MODES}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown distance backend {self.backend!r}; choose one of {BACKENDS}")
        if self.dtype not in OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {self.dtype}")
        if not (math.isfinite(self.truncation) and self.truncation > 0):
            raise ValueError(f"truncation R must be a positive distance in mm, got {self.truncation}")
        if int(self.bins) != self.bins or self.bins < 1:
            raise ValueError(f"bins K must be a positive integer, got {self.bins}")
        if not (math.isfinite(self.w0) and self.w0 >= 0):
            raise ValueError(f"w0 must be a non-negative number, got {self.w0}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a positive number of voxels, got {self.sigma}")


def spacing_tuple(spacing: Spacing, spatial_ndim: int) -> tuple[float, ...]:
    """One positive spacing per spatial axis, from one value, a sequence or a tensor."""
    values = torch.as_tensor(spacing, dtype=torch.float64).flatten().tolist()
    if len(values) == 1:
        values = values * spatial_ndim
    if len(values) != spatial_ndim:
        raise ValueError(f"spacing has {len(values)} values for {spatial_ndim} spatial dims: {values}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values must be positive and finite, got {values}")
    return tuple(values)


def _extrema(xp: Any, values: Any, where: Any | None) -> tuple[Any, Any]:
    """Largest and smallest of ``values`` (where ``where`` is True, when given; it holds at least one True)."""
    if where is None:
        return values.max(), values.min()
    if xp is np:  # no gathered copy
        return values.max(where=where, initial=-np.inf), values.min(where=where, initial=np.inf)
    chosen = values[where]
    return chosen.max(), chosen.min()


def _inverted_normalised(xp: Any, values: Any, where: Any | None = None) -> Any:
    """(max − d) / (max − min) of one region's distances (``where``: its voxels among ``values``; None: all):
    1 on its voxels nearest the boundary, 0 on its farthest."""
    far, near = _extrema(xp, values, where)
    if far == near:  # every voxel of the region is in the layer next to the boundary
        return xp.ones_like(values)
    return (far - values) / (far - near)


def _no_boundary_value(settings: MapSettings, full: bool, diagonal: float) -> float:
    """The constant map of a class with no voxel (``full=False``) or no voxel outside it (``full=True``)."""
    return {
        "signed": -diagonal if full else diagonal,
        "unsigned": 0.0,
        "penalty": 0.0,
        "rrw": -1.0 if full else 1.0,
        "quantized": float(settings.bins) if full else 0.0,
    }[settings.mode]


def _needs_outside(settings: MapSettings) -> bool:
    """Whether the mode reads distances outside a class (``rrw`` and ``quantized`` are constant there)."""
    return settings.mode in ("signed", "unsigned", "penalty")


def _fill_outside(xp: Any, settings: MapSettings, out: Any, to_class: Any | None, outside: Any) -> None:
    """Write the mode's outside values into ``out`` (everywhere; the inside is overwritten next)."""
    mode = settings.mode
    if mode in ("signed", "unsigned"):
        out[...] = to_class
    elif mode == "penalty":
        values = to_class[outside]
        far, near = values.max(), values.min()
        if far == near:
            out[...] = 1.0
        else:
            xp.multiply(far - to_class, 1.0 / (far - near), out=out)
    else:
        out[...] = 1.0 if mode == "rrw" else 0.0


def _inside_values(xp: Any, settings: MapSettings, distances: Any, finest: float, where: Any | None = None) -> Any:
    """The mode's values on a class's voxels from their inside distances :math:`d_{in}`.

    ``where``: which of ``distances`` are the class's voxels (the others get unspecified values); None: all."""
    mode = settings.mode
    if mode == "signed":
        return finest - distances
    if mode == "unsigned":
        return distances
    if mode == "penalty":
        return _inverted_normalised(xp, distances, where)
    if mode == "rrw":
        return -distances / _extrema(xp, distances, where)[0]
    width = settings.truncation / settings.bins  # quantized
    bins = xp.ceil(xp.minimum(distances, settings.truncation) / width - _BIN_EDGE_TOLERANCE)
    return xp.maximum(bins, 1.0)


def class_index(xp: Any, masks: Any) -> Any | None:
    """``1 + c`` on the voxels of class c and ``C + 1`` on voxels of no class, or None when classes overlap."""
    num_classes = masks.shape[0]
    dtype = np.uint8 if num_classes < 255 else np.uint32
    index = xp.full(masks.shape[1:], num_classes + 1, dtype=dtype)
    for c in range(num_classes):
        if (index[masks[c]] != num_classes + 1).any():
            return None
        index[masks[c]] = c + 1
    return index


def _region_maps(
    masks: Any, known: Any | None, spacing: tuple[float, ...], settings: MapSettings, backend: DistanceBackend
) -> Any:
    """Maps of every class ``(C, *spatial)`` from boolean class masks and the voxels that take part (None: all),
    one transform per class and side: for overlapping classes or ignored voxels (else :func:`_label_maps`)."""
    xp = backend.xp
    num_classes = masks.shape[0]
    out = backend.empty(masks.shape)
    diagonal = _diagonal(masks.shape[1:], spacing)
    finest = min(spacing)
    voxels = int(masks[0].size if known is None else known.sum())
    for c in range(num_classes):
        inside = masks[c] if known is None else masks[c] & known
        size = int(inside.sum())
        if size == 0 or size == voxels:
            out[c] = _no_boundary_value(settings, full=size > 0, diagonal=diagonal)
        else:
            outside = ~masks[c] if known is None else ~masks[c] & known
            to_boundary = backend.distance_to(outside, spacing)
            to_class = backend.distance_to(inside, spacing) if _needs_outside(settings) else None
            _fill_outside(xp, settings, out[c], to_class, outside)
            out[c][inside] = _inside_values(xp, settings, to_boundary[inside], finest)
        if known is not None:
            out[c][~known] = 0.0
    return out if settings.dtype == torch.float32 else out.astype(NUMPY_DTYPES[settings.dtype])


def _diagonal(shape: Sequence[int], spacing: tuple[float, ...]) -> float:
    """The patch diagonal :math:`\\sqrt{\\sum_a (n_a s_a)^2}`, which bounds every in-patch distance."""
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))


def _label_maps(
    index: Any, num_classes: int, spacing: tuple[float, ...], settings: MapSettings, backend: DistanceBackend
) -> Any:
    """Maps of every class ``(C, *spatial)`` of an exclusive label map with every voxel known (:func:`class_index`).

    One multi-label pass gives every class's inside distances, and one pass over the index every class's size and
    bounding box. Each channel is written once, in place: the mode's outside values over the grid (a constant for
    ``rrw`` and ``quantized``; for the others the outside distance, computed straight into the channel, cropped to
    the class where that pays (:mod:`._cropped_edt`), and none at all when the map holds just two labels: each
    one's outside is the other's inside), then the inside values over the class's voxels in its bounding box.
    """
    xp = backend.xp
    shape = index.shape
    out = backend.empty((num_classes, *shape))
    finest = min(spacing)
    whole = tuple(slice(0, n) for n in shape)
    counts = xp.bincount(index.ravel(), minlength=num_classes + 2)
    sizes = counts[1 : num_classes + 1].tolist()
    two_labels = int((counts > 0).sum()) == 2
    boxes = ndimage.find_objects(index, max_label=num_classes) if xp is np else [whole] * num_classes
    shared = backend.label_distances(index, spacing)  # d_in of every class, on its own voxels
    for c in range(num_classes):
        channel = out[c]
        if sizes[c] in (0, index.size):
            channel[...] = _no_boundary_value(settings, full=sizes[c] > 0, diagonal=_diagonal(shape, spacing))
            continue
        box = boxes[c] or whole
        in_class = index[box] == c + 1
        if not _needs_outside(settings):
            channel[...] = 1.0 if settings.mode == "rrw" else 0.0
        elif two_labels:  # the other label's inside distance, 0 on the class like a computed outside distance
            channel[...] = shared
            xp.copyto(channel[box], 0.0, where=in_class)
        else:
            _distance_to_class(backend, index, c, box, spacing, channel)
        if settings.mode == "penalty":
            _invert_outside(xp, channel, index, c, box)
        xp.copyto(channel[box], _inside_values(xp, settings, shared[box], finest, in_class), where=in_class)
    return out if settings.dtype == torch.float32 else out.astype(NUMPY_DTYPES[settings.dtype])


def _distance_to_class(
    backend: DistanceBackend, index: Any, c: int, box: tuple[slice, ...], spacing: tuple[float, ...], channel: Any
) -> None:
    """Write the distance from every voxel to the nearest voxel of class c (``index == c + 1``, bounding box
    ``box``) into ``channel``; with ``edt`` and a small box, straight into it (no grid-sized temporary)."""
    xp = backend.xp
    target = xp.zeros(index.shape, dtype=bool)
    target[box] = index[box] == c + 1
    if backend.name == "edt" and worth_cropping(box, index.shape):
        squared_distance_to(target, spacing, box, out=channel)
        xp.sqrt(channel, out=channel)
    else:
        channel[...] = backend.distance_to(target, spacing)


def _invert_outside(xp: Any, channel: Any, index: Any, c: int, box: tuple[slice, ...]) -> None:
    """DPCE's outside values in place: :math:`(\\max d - d)/(\\max d - \\min d)` over the voxels outside class c.

    ``channel`` holds the outside distances (0 on the class). The nearest outside voxels touch the class (a voxel
    one step from a class voxel towards any outside voxel is outside and no farther), so the minimum is taken on
    the box grown by one voxel; the maximum is the channel's.
    """
    grown = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(box, index.shape, strict=True))
    far = channel.max()
    near = channel[grown][index[grown] != c + 1].min()
    if far == near:
        channel[...] = 1.0
    else:
        xp.subtract(far, channel, out=channel)
        xp.multiply(channel, 1.0 / (far - near), out=channel)


def _unet_weight_map(
    masks: Any, known: Any | None, spacing: tuple[float, ...], settings: MapSettings, backend: DistanceBackend
) -> Any:
    """Ronneberger's weight map ``(1, *spatial)`` from exclusive class masks (channel 0 is the background)."""
    xp = backend.xp
    known = xp.ones(masks.shape[1:], dtype=bool) if known is None else known
    if masks.shape[0] == 1:
        classes = masks[0].astype(np.int64)  # a single foreground channel: class 1 where set, background elsewhere
    else:
        overlap = (masks.sum(0) != 1) & known
        if overlap.any():
            raise ValueError(
                f"unet_weight needs exclusive classes, but {int(overlap.sum())} voxels have zero or several classes"
            )
        classes = masks.astype(np.uint8).argmax(0)
    num_classes = max(masks.shape[0], 2)
    counts = xp.bincount(classes[known], minlength=num_classes).astype(np.float64)
    class_weight = xp.ones(num_classes)
    if settings.class_balance and counts.max() > 0:
        class_weight = xp.where(counts > 0, counts.max() / xp.maximum(counts, 1.0), 1.0)
    weight = class_weight[classes]

    nearest = xp.full(classes.shape, math.inf, dtype=np.float32)
    second = xp.full(classes.shape, math.inf, dtype=np.float32)
    classes_cpu, known_cpu = _host(classes), _host(known)
    for c in range(1, num_classes):
        components, count = ndimage.label((classes_cpu == c) & known_cpu)
        for k in range(1, count + 1):
            distances = backend.distance_to(xp.asarray(components == k), spacing)
            second = xp.minimum(second, xp.maximum(nearest, distances))
            nearest = xp.minimum(nearest, distances)
    gap = (nearest + second) / min(spacing)  # in voxels of the finest spacing; inf with fewer than two objects
    border = settings.w0 * xp.exp(-(gap**2) / (2 * settings.sigma**2))
    weight = weight + xp.where(classes == 0, border, 0.0)
    return xp.where(known, weight, 0.0)[None].astype(NUMPY_DTYPES[settings.dtype])


def _host(array: Any) -> np.ndarray:
    """A numpy copy of a numpy or CuPy array (connected components are labelled on the CPU)."""
    return array.get() if hasattr(array, "get") else array


def item_maps(
    masks: Any | None,
    known: Any | None,
    spacing: tuple[float, ...],
    settings: MapSettings,
    backend: DistanceBackend,
    index: Any | None = None,
    num_classes: int | None = None,
) -> Any:
    """The maps of one item: ``(C, *spatial)``, or ``(1, *spatial)`` for ``unet_weight``, in ``settings.dtype``.

    ``masks``: boolean class masks ``(C, *spatial)``; or None with ``index`` (a label map's :func:`class_index`,
    every voxel known) and ``num_classes``. ``index`` without masks' is computed here when the classes allow.
    """
    xp = backend.xp
    if masks is None:
        if index is None or num_classes is None or known is not None:
            raise ValueError("item_maps needs class masks, or a class index of known voxels and num_classes")
        if settings.mode != "unet_weight":
            return _label_maps(index, num_classes, spacing, settings, backend)
        masks = index[None] == xp.arange(1, num_classes + 1, dtype=index.dtype).reshape(-1, *[1] * index.ndim)
    if settings.mode == "unet_weight":
        return _unet_weight_map(masks, known, spacing, settings, backend)
    if known is None:
        index = class_index(xp, masks) if index is None else index
        if index is not None:
            return _label_maps(index, masks.shape[0], spacing, settings, backend)
    return _region_maps(masks, known, spacing, settings, backend)


def check_binary(xp: Any, values: Any, what: str) -> None:
    """Raise unless every value is 0 or 1."""
    if not ((values == 0) | (values == 1)).all():
        raise ValueError(f"{what} holds values other than 0 and 1; pass a (1, *spatial) label map instead")


def masks_from_label(
    xp: Any, label: Any, num_classes: int | None, ignore_index: int | None
) -> tuple[Any, Any | None, Any | None]:
    """Boolean class masks ``(C, *spatial)``, known voxels (None: all) and, for a label map with every voxel known,
    its :func:`class_index` instead of the masks (masks None; else index None), from a channel-first label or
    one-hot."""
    if label.ndim not in (3, 4):
        raise ValueError(f"label must be channel-first (C, H, W) or (C, H, W, D), got shape {tuple(label.shape)}")
    channels = label.shape[0]
    if channels == 1:
        if num_classes is None:
            raise ValueError("a (1, *spatial) label map needs num_classes (the number of output channels)")
        labels = label[0]
        if labels.dtype.kind == "f" and not (labels == xp.round(labels)).all():
            raise ValueError("label map holds non-integer values; pass class indices or a one-hot label")
        known = None if ignore_index is None else labels != ignore_index
        valid = labels if known is None else labels[known]
        top = max(num_classes, 2) - 1
        if valid.size and (valid.min() < 0 or valid.max() > top):
            bad = int(valid.min()) if valid.min() < 0 else int(valid.max())
            hint = f"or ignore_index={ignore_index}" if ignore_index is not None else "set ignore_index to skip it"
            raise ValueError(
                f"label value {bad} is out of range for num_classes={num_classes} (valid: 0..{top}; {hint})"
            )
        if num_classes == 1:
            masks = (labels == 1)[None]
            index = xp.where(masks[0], 1, 2).astype(np.uint8)
        elif known is None or known.all():  # 1 + class, as class_index; no masks needed
            masks, index = None, labels.astype(np.uint8 if num_classes < 255 else np.uint32) + 1
        else:
            masks = labels[None] == xp.arange(num_classes).reshape(-1, *[1] * labels.ndim)
            index = None
    else:
        if num_classes is not None and num_classes != channels:
            raise ValueError(f"one-hot label has {channels} channels but num_classes={num_classes}")
        check_binary(xp, label, "one-hot label")
        masks = label > 0
        if ignore_index is None:
            known = None
        elif 0 <= ignore_index < channels:
            known = ~masks[ignore_index]  # MONAI's rule, as in medseg.losses: that channel's voxels are ignored
        else:
            known = masks.any(0)  # otherwise voxels with no class set are ignored
        index = None
    known = None if known is None or known.all() else known
    if known is not None:
        return masks, known, None
    return (None if index is not None else masks), None, index
