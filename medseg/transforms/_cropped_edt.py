r"""Exact squared Euclidean distance to a small voxel set, computed axis by axis inside its bounding box.

The squared distance to a set :math:`F` is separable (Felzenszwalb & Huttenlocher, Theory of Computing 2012):

.. math:: D^2(x) = \min_{y \in F} \sum_a s_a^2 (x_a - y_a)^2

is one lower envelope of parabolas per axis, applied one axis after another. Before an axis is processed, every
value outside :math:`F`'s bounding box along it is infinite, so each step reads only the box's extent of that axis
and writes the full axis: the early steps work on a thin slab, and only the last touches every voxel. Per output
line the minimum is taken by divide and conquer over the target positions: the best source position is monotone
in the target position (the difference of two parabolas of equal width is linear), so the sources searched for the
left and right halves are bounded by the ones found at the midpoint, over all lines at once.

For an organ occupying a few percent of a CT patch this is several times faster than a full-volume EDT pass, and
it is exact in float32 arithmetic (no truncation, no approximation). :func:`worth_cropping` says when it pays.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

# Candidate blocks of at most this many values are reduced in one numpy call instead of being split further.
_BLOCK = 1 << 18
# Crop when the estimated work (numpy operations per voxel of the grid) is below this: the cropped transform took
# about work / 65 of a full-volume ``edt`` pass of the same set (timed side by side on every organ of label maps of
# 160 x 160 x 48, 96^3 and 196 x 142 x 127: 0.51 at work 30, 1.15 at work 80).
_MAX_WORK = 60.0


def bounding_box(target: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel of ``target`` (None when there is none)."""
    rows = target.reshape(target.shape[0], -1).any(1)
    if not rows.any():
        return None
    projections = [rows]
    if target.ndim > 1:
        rest = target.any(0)  # one pass over the grid for every other axis
        for axis in range(rest.ndim):
            projections.append(rest.any(tuple(a for a in range(rest.ndim) if a != axis)) if rest.ndim > 1 else rest)
    box = []
    for hits in projections:
        where = np.flatnonzero(hits)
        box.append(slice(int(where[0]), int(where[-1]) + 1))
    return tuple(box)


def _work(order: Sequence[int], extent: Sequence[int], shape: Sequence[int]) -> float:
    """Estimated numpy operations per grid voxel of :func:`squared_distance_to` processing axes in ``order``.

    The first step is two accumulating scans of a slab; a middle step searches about its extent's worth of sources
    (lines that miss the set leave the search wide); the last step writes every voxel, its search narrowed by the
    monotone best source, and is then moved into the grid's memory order unless it ran along axis 0.
    """
    sizes = list(extent)
    total = float(np.prod(shape, dtype=np.float64))
    work = 0.0
    for step, axis in enumerate(order):
        sizes[axis] = shape[axis]
        share = float(np.prod(sizes, dtype=np.float64)) / total
        if step == 0:
            work += 4.0 * share
        elif step < len(order) - 1:
            work += extent[axis] * share
        else:
            work += 1.0 + 0.3 * extent[axis] + (3.0 if axis else 0.0)
    return work


def _axis_order(extent: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """The axis order with the least estimated work (:func:`_work`)."""
    return min(itertools.permutations(range(len(shape))), key=lambda order: _work(order, extent, shape))


def estimated_work(box: tuple[slice, ...], shape: Sequence[int]) -> float:
    """Numpy operations per grid voxel that :func:`squared_distance_to` is expected to take for this box."""
    extent = [b.stop - b.start for b in box]
    return _work(_axis_order(extent, shape), extent, shape)


def worth_cropping(box: tuple[slice, ...], shape: Sequence[int]) -> bool:
    """Whether :func:`squared_distance_to` beats a full-volume EDT pass for a set with this bounding box.

    A box over most of the grid is left to ``edt``, whose pass is fast where the set is (its voxels need no
    search): a large set is usually dense in its box.
    """
    share = float(np.prod([b.stop - b.start for b in box], dtype=np.float64) / np.prod(shape, dtype=np.float64))
    return share <= 0.5 and estimated_work(box, shape) <= _MAX_WORK


def _scan_first_axis(found: np.ndarray, start: int, length: int, weight: float) -> np.ndarray:
    """``(length, M)`` squared distances along axis 0 to the nearest True of ``found`` (``(k, M)``, placed at
    ``start``); infinite on lines without one."""
    present = np.zeros((length, found.shape[1]), dtype=bool)
    present[start : start + found.shape[0]] = found
    position = np.arange(length, dtype=np.float32)[:, None]
    before = np.where(present, position, np.float32(-np.inf))
    np.maximum.accumulate(before, axis=0, out=before)
    after = np.where(present, position, np.float32(np.inf))[::-1]
    after = np.minimum.accumulate(after, axis=0)[::-1]
    gap = np.minimum(position - before, after - position)
    return np.float32(weight) * gap * gap


def _lower_envelope(
    values: np.ndarray, start: int, length: int, weight: float, out: np.ndarray | None = None
) -> np.ndarray:
    """``out[x] = min_i values[i] + weight (x - start - i)^2`` for x in 0..length-1, over columns ``(k, M)``.

    ``out``: a float32 ``(length, M)`` array to write into (default: a new one)."""
    k, columns = values.shape
    out = np.empty((length, columns), dtype=np.float32) if out is None else out
    source = np.arange(k, dtype=np.float32) + start
    parabola = (np.float32(weight) * (np.arange(length, dtype=np.float32)[:, None] - source) ** 2).astype(np.float32)
    scratch = np.empty((k, columns), dtype=np.float32)
    tie = np.empty(columns, dtype=bool)
    pending = [(0, length - 1, 0, k - 1)]  # targets [xl, xr] take their best source in [jl, jr]
    while pending:
        xl, xr, jl, jr = pending.pop()
        if xl > xr:
            continue
        if jl == jr:
            np.add(values[jl], parabola[xl : xr + 1, jl, None], out=out[xl : xr + 1])
            continue
        if (xr - xl + 1) * (jr - jl + 1) * columns <= _BLOCK:
            block = values[None, jl : jr + 1] + parabola[xl : xr + 1, jl : jr + 1, None]
            np.minimum.reduce(block, axis=1, out=out[xl : xr + 1])
            continue
        xm = (xl + xr) // 2
        candidates = scratch[: jr - jl + 1]
        np.add(values[jl : jr + 1], parabola[xm, jl : jr + 1, None], out=candidates)
        best = out[xm]
        np.minimum.reduce(candidates, axis=0, out=best)
        counted = best < np.inf if best.max() == np.inf else None  # lines with no source yet bound nothing
        low, high = _tied_rows(candidates, best, counted, tie)
        pending.append((xl, xm - 1, jl, jl + high))
        pending.append((xm + 1, xr, jl + low, jr))
    return out


def _tied_rows(
    candidates: np.ndarray, best: np.ndarray, counted: np.ndarray | None, tie: np.ndarray
) -> tuple[int, int]:
    """The first and last row of ``candidates`` that attain ``best`` on some column (of the ``counted`` ones; all
    rows when none does): the bounds of the divide and conquer.

    They lie near the ends of the block, so scanning row by row from each end reads a few rows, not the block
    (about 15 % off the last step's time on CT label maps, measured)."""

    def attains(row: int) -> bool:
        np.equal(candidates[row], best, out=tie)
        if counted is not None:
            np.logical_and(tie, counted, out=tie)
        return bool(tie.any())

    rows = candidates.shape[0]
    low = next((row for row in range(rows) if attains(row)), None)
    if low is None:
        return 0, rows - 1
    return low, next(row for row in range(rows - 1, low - 1, -1) if attains(row))


def _restore_axis(lines: np.ndarray, shape: Sequence[int], axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """The C-ordered array of ``shape`` (written into ``out`` when given) from ``(shape[axis], *other axes)`` lines."""
    before = int(np.prod(shape[:axis], dtype=np.int64))
    after = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    if axis == 0:
        if out is None:
            return lines.reshape(shape)
        if not np.may_share_memory(out, lines):  # else written in place
            out.reshape(lines.shape)[...] = lines
        return out
    out = np.empty(shape, dtype=lines.dtype) if out is None else out
    if after == 1:  # a 2D transpose: torch's blocked copy is about four times numpy's strided one
        torch.from_numpy(out.reshape(before, shape[axis])).copy_(torch.from_numpy(lines.reshape(shape[axis], before)).T)
    else:
        out.reshape(before, shape[axis], after)[...] = lines.reshape(shape[axis], before, after).transpose(1, 0, 2)
    return out


def squared_distance_to(
    target: np.ndarray, spacing: Sequence[float], box: tuple[slice, ...], out: np.ndarray | None = None
) -> np.ndarray:
    """Squared distance (float32, squared mm) from every voxel to the nearest True voxel of ``target``.

    ``box`` is ``target``'s bounding box (:func:`bounding_box`; only ``target[box]`` is read); ``spacing`` one value
    per axis. ``out``: a C-contiguous float32 array of ``target``'s shape to write the result into (and return);
    default a new one.
    """
    shape = target.shape
    if out is not None and (out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}, got {out.dtype} {out.shape}")
    extent = [b.stop - b.start for b in box]
    order = _axis_order(extent, shape)
    values: np.ndarray = target[box]
    for step, axis in enumerate(order):
        moved = np.moveaxis(values, axis, 0)
        rest = moved.shape[1:]
        lines = np.ascontiguousarray(moved).reshape(moved.shape[0], -1)
        weight = float(spacing[axis]) ** 2
        start = box[axis].start
        last = step == len(order) - 1
        if step == 0:
            lines = _scan_first_axis(lines, start, shape[axis], weight)
        else:  # the last step along axis 0 writes its lines straight into ``out``: they are in C order
            direct = out.reshape(shape[axis], -1) if last and axis == 0 and out is not None else None
            lines = _lower_envelope(lines, start, shape[axis], weight, direct)
        if last:
            return _restore_axis(lines, shape, axis, out)
        values = np.moveaxis(lines.reshape(shape[axis], *rest), 0, axis)
    raise ValueError("target must have at least one axis")
