"""Soft erosions of Karimi & Salcudean's Hausdorff-ER loss, cache-blocked, with the gradient in the same sweep.

The K erosions are a chain of full-volume passes with a min-max normalisation per item and class between them, so
their cost is memory traffic: about 15 elementwise passes per erosion forward (cross sum 6, threshold 3, min and
max 2, normalisation 2, sum 1) and 18 backward (two sums, tie masks and counts 4, scaling 4, cross sum 6, the direct
gradient 1), ~330 for K = 10 against a cross-entropy step's ~7. Done on the whole batch with
autograd, each pass streams the batch through main memory, every step allocates fresh tensors and autograd keeps
about five of them per erosion. Here the batch is cut into blocks of whole (item, class) volumes that fit the CPU's
cache; each block runs its K erosions forward and then backward while it is resident, writing only its result:

- ``reduction="mean"/"sum"``: the loss is linear in the per-volume sums, so the gradient of each sum with respect
  to the probabilities is computed in the forward and scaled by the incoming gradient in the backward (one tensor
  kept, nothing recomputed).
- ``reduction="none"``: the per-voxel sum comes out; the backward replays each block's erosions (cheap, in cache).

Backward of one erosion, :math:`y = (x - \\min x) / (\\max x - \\min x)`, :math:`x = m\\,\\max(Bz - 0.5, 0)`:
:math:`\\partial x_j = g_j / r + [x_j = \\min x]\\,\\delta_{lo} / n_{lo} + [x_j = \\max x]\\,\\delta_{hi} / n_{hi}` with
:math:`\\delta_{lo} = \\sum_i g_i (y_i - 1) / r`, :math:`\\delta_{hi} = -\\sum_i g_i y_i / r` (the min and max take
their gradient evenly over ties, as torch's ``amin``/``amax``), then :math:`\\partial z = B^\\top (m\\,[Bz \\ge 0.5]\\,
\\partial x)` with :math:`B^\\top = B` (the cross mean is symmetric under zero padding). Volumes whose erosion is
constant skip the normalisation (identity). Once a block's erosion is zero everywhere the later ones are zero too
and have no gradient: the block stops there.
"""

from __future__ import annotations

import math

import torch

#: bytes of one block of (item, class) volumes on the CPU, about the L2 cache (blocks of 0.5 to 4 MiB time alike on
#: the benchmark; 2 MiB holds a 9-class 224² item, a 96³ volume is its own block); accelerators take larger blocks
#: (fewer kernel launches), bounded as a block holds about 2K + 4 buffers: 16 MiB, ~0.4 GiB of scratch for K = 10
CPU_BLOCK_BYTES = 1 << 21
DEVICE_BLOCK_BYTES = 1 << 24


def cross_sum(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` = each voxel plus its face neighbours (zero beyond the edge), over all axes after the first.

    The sum runs centre, then the lower and upper neighbour of each axis in turn (the order of a zero-padded sum of
    shifted slices, so the same floats)."""
    first = src.shape[1]
    out.narrow(1, 0, 1).copy_(src.narrow(1, 0, 1))
    torch.add(src.narrow(1, 1, first - 1), src.narrow(1, 0, first - 1), out=out.narrow(1, 1, first - 1))
    out.narrow(1, 0, first - 1).add_(src.narrow(1, 1, first - 1))
    for axis in range(2, src.ndim):
        size = src.shape[axis]
        out.narrow(axis, 1, size - 1).add_(src.narrow(axis, 0, size - 1))
        out.narrow(axis, 0, size - 1).add_(src.narrow(axis, 1, size - 1))
    return out


class _Buffers:
    """Reused scratch tensors of one block size: fresh CPU allocations of a block or more are page-faulted in on
    every use (a third of the time of the erosions when each step allocates)."""

    def __init__(self, like: torch.Tensor, numel: int) -> None:
        self.like, self.numel, self.free = like, numel, []

    def take(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        flat = self.free.pop() if self.free else self.like.new_empty(self.numel)
        return flat[: math.prod(shape)].view(shape)

    def give(self, *tensors: torch.Tensor | None) -> None:
        self.free += [t if t._base is None else t._base for t in tensors if t is not None]


class _Erosion:
    """The stored pieces of one erosion of a block, for its backward: the output ``y``, 1.0 where the threshold lets
    the gradient through (0.0 elsewhere), the normalisation's span (1 where the erosion is constant) and whether it
    varies ``(n, 1, ...)``."""

    def __init__(self, y: torch.Tensor, passes: torch.Tensor | None, span: torch.Tensor, varies: torch.Tensor) -> None:
        self.y, self.passes, self.span, self.varies = y, passes, span, varies


# Masks are float tensors (1.0/0.0) and the min and max separate reductions: on the CPU, torch's comparisons into
# bool tensors, products with them, ``where`` and ``aminmax`` run several times slower than float arithmetic.


def _erode(
    current: torch.Tensor, mask: torch.Tensor | None, buffers: _Buffers, keep_grad_info: bool
) -> tuple[_Erosion, bool]:
    """One soft erosion of a block ``(n, *spatial)``: cross mean, threshold at 0.5, mask, min-max normalisation.

    Returns the erosion (with what its backward needs) and whether it is zero everywhere."""
    n, *spatial = current.shape
    spread = cross_sum(current, buffers.take(current.shape)).div_(2 * len(spatial) + 1)
    passes = torch.ge(spread, 0.5, out=buffers.take(current.shape)) if keep_grad_info else None
    x = spread.clamp_min_(0.5).sub_(0.5)  # max(spread - 0.5, 0) exactly, in place
    if mask is not None:
        x.mul_(mask)
    flat = x.view(n, -1)
    low, high = flat.amin(1), flat.amax(1)
    span = high - low
    varies = span != 0
    shape = (n,) + (1,) * len(spatial)
    span = torch.where(varies, span, 1.0).view(shape)
    y = x.sub_(torch.where(varies, low, 0.0).view(shape)).div_(span)  # constant volumes: (x - 0) / 1 = x
    zero = not bool((varies | (high != 0)).any())
    return _Erosion(y, passes, span, varies.view(shape)), zero


def _erosion_backward(grad: torch.Tensor, step: _Erosion, mask: torch.Tensor | None, buffers: _Buffers) -> torch.Tensor:
    """Gradient with respect to the eroded input ``z`` from the gradient ``grad`` with respect to ``y``.

    ``grad`` and the step's tensors go back to ``buffers``."""
    n, *spatial = grad.shape
    shape = (n,) + (1,) * len(spatial)
    y, span = step.y, step.span
    flat_grad, flat_y = grad.view(n, -1), y.view(n, -1)
    weighted = torch.linalg.vecdot(flat_grad, flat_y).view(shape)  # Σ g y
    total = flat_grad.sum(1).view(shape)
    # y = 0 exactly where x = min x, y = 1 exactly where x = max x
    at_low = torch.eq(y, 0.0, out=buffers.take(y.shape))
    at_high = torch.eq(y, 1.0, out=step.y)
    count_low = at_low.view(n, -1).sum(1).view(shape).clamp_min(1)
    count_high = at_high.view(n, -1).sum(1).view(shape).clamp_min(1)
    d_low = torch.where(step.varies, (weighted - total) / span / count_low, 0.0)
    d_high = torch.where(step.varies, -weighted / span / count_high, 0.0)
    grad.div_(span).addcmul_(at_low, d_low).addcmul_(at_high, d_high).mul_(step.passes)
    if mask is not None:
        grad.mul_(mask)
    grad.div_(2 * len(spatial) + 1)
    out = cross_sum(grad, at_low)
    buffers.give(grad, step.y, step.passes)
    return out


def erode_block(
    error: torch.Tensor,
    mask: torch.Tensor | None,
    weights: list[float],
    direct: torch.Tensor | float | None,
    buffers: _Buffers,
    total: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""K = ``len(weights)`` soft erosions of one block ``(n, *spatial)`` of squared errors ``error`` (masked).

    Returns the per-volume sums :math:`\sum_k w_k \sum_x e^{(k)}` ``(n,)`` (float64), and with ``direct`` the gradient
    with respect to ``error`` (a tensor from ``buffers``) when the gradient of the output with respect to each
    :math:`\sum_k w_k e^{(k)}` voxel is ``direct`` (a tensor of the block's shape, or a number; masked by the caller).
    ``total``: a ``(n, *spatial)`` tensor that receives :math:`\sum_k w_k e^{(k)}` per voxel.
    """
    n = error.shape[0]
    sums = torch.zeros(n, dtype=torch.float64, device=error.device)
    steps: list[_Erosion] = []
    current = error
    for depth, weight in enumerate(weights, start=1):
        step, zero = _erode(current, mask, buffers, direct is not None)
        if direct is None and depth > 1:
            buffers.give(current)
        steps.append(step)
        current = step.y
        sums += weight * current.view(n, -1).sum(1)
        if total is not None:
            total.add_(current, alpha=weight) if depth > 1 else torch.mul(current, weight, out=total)
        if zero:
            break  # zero from here on: later erosions are zero, pass no gradient, and add nothing
    if direct is None:
        buffers.give(current)
        return sums, None
    grad = buffers.take(error.shape)
    for depth in range(len(steps), 0, -1):
        if depth == len(steps):
            grad.copy_(direct).mul_(weights[depth - 1]) if torch.is_tensor(direct) else grad.fill_(direct * weights[-1])
        elif torch.is_tensor(direct):
            grad.add_(direct, alpha=weights[depth - 1])
        else:
            grad.add_(direct * weights[depth - 1])
        grad = _erosion_backward(grad, steps[depth - 1], mask, buffers)
    return sums, grad


def _blocks(probs: torch.Tensor):
    """``(item, first class, last class + 1)`` of each block of whole volumes of ``(B, C, *spatial)``, and the
    largest block's number of elements."""
    batch, classes = probs.shape[:2]
    volume = math.prod(probs.shape[2:])
    budget = CPU_BLOCK_BYTES if probs.device.type == "cpu" else DEVICE_BLOCK_BYTES
    per_block = max(1, min(classes, budget // max(volume * probs.element_size(), 1)))
    blocks = [
        (item, first, min(first + per_block, classes))
        for item in range(batch)
        for first in range(0, classes, per_block)
    ]
    return blocks, per_block * volume


def _block_error(
    probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, block: tuple[int, int, int], buffers: _Buffers
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``p - t``, the squared error ``m (p - t)^2`` and the mask ``m`` (or ``None``) of one block, in ``buffers``."""
    item, first, last = block
    shape = probs[item, first:last].shape
    difference = torch.sub(probs[item, first:last], target[item, first:last], out=buffers.take(shape))
    error = torch.mul(difference, difference, out=buffers.take(shape))
    block_mask = None
    if mask is not None:
        block_mask = buffers.take(shape).copy_(mask[item].expand(shape))
        error.mul_(block_mask)
    return difference, error, block_mask


class _ErodedSums(torch.autograd.Function):
    r"""Per item and class :math:`\sum_k w_k \sum_x e^{(k)}`, ``(B, C)``, of ``e^{(0)} = m (p - t)^2``; the gradient is
    computed in the forward (it does not depend on the incoming one beyond a factor per item and class)."""

    @staticmethod
    def forward(ctx, probs, target, mask, weights):
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        sums = torch.empty(probs.shape[:2], dtype=torch.float64, device=probs.device)
        jacobian = torch.empty_like(probs) if needs_grad else None
        blocks, numel = _blocks(probs)
        buffers = _Buffers(probs, numel)
        for item, first, last in blocks:
            difference, error, block_mask = _block_error(probs, target, mask, (item, first, last), buffers)
            direct = (1.0 if block_mask is None else block_mask) if needs_grad else None
            sums[item, first:last], grad = erode_block(error, block_mask, weights, direct, buffers)
            if needs_grad:
                out = torch.mul(difference, grad, out=jacobian[item, first:last]).mul_(2)
                if block_mask is not None:
                    out.mul_(block_mask)
            buffers.give(difference, error, block_mask, grad)
        ctx.save_for_backward(jacobian, probs, target, mask)
        ctx.weights = weights
        return sums.to(probs.dtype)

    @staticmethod
    def backward(ctx, grad_sums):
        jacobian, probs, target, mask = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the plain formula instead
            return _dense_gradients(ctx, _dense_eroded(probs, target, mask, ctx.weights).flatten(2).sum(2), grad_sums)
        grad = jacobian * grad_sums.view(*grad_sums.shape, *([1] * (jacobian.ndim - 2)))
        return grad, (-grad if ctx.needs_input_grad[1] else None), None, None


class _ErodedVoxels(torch.autograd.Function):
    r"""Per voxel :math:`\sum_k w_k e^{(k)}`, ``(B, C, *spatial)``; the backward replays each block's erosions."""

    @staticmethod
    def forward(ctx, probs, target, mask, weights):
        total = torch.empty_like(probs)
        blocks, numel = _blocks(probs)
        buffers = _Buffers(probs, numel)
        for item, first, last in blocks:
            difference, error, block_mask = _block_error(probs, target, mask, (item, first, last), buffers)
            erode_block(error, block_mask, weights, None, buffers, total[item, first:last])
            buffers.give(difference, error, block_mask)
        ctx.save_for_backward(probs, target, mask)
        ctx.weights = weights
        return total

    @staticmethod
    def backward(ctx, grad_total):
        probs, target, mask = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the plain formula instead
            return _dense_gradients(ctx, _dense_eroded(probs, target, mask, ctx.weights), grad_total)
        grad = torch.empty_like(probs)
        blocks, numel = _blocks(probs)
        buffers = _Buffers(probs, numel)
        for item, first, last in blocks:
            difference, error, block_mask = _block_error(probs, target, mask, (item, first, last), buffers)
            direct = buffers.take(error.shape).copy_(grad_total[item, first:last])
            if block_mask is not None:
                direct.mul_(block_mask)
            _, grad_error = erode_block(error, block_mask, ctx.weights, direct, buffers)
            out = torch.mul(difference, grad_error, out=grad[item, first:last]).mul_(2)
            if block_mask is not None:
                out.mul_(block_mask)
            buffers.give(difference, error, block_mask, direct, grad_error)
        return grad, (-grad if ctx.needs_input_grad[1] else None), None, None


def _dense_eroded(
    probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, weights: list[float]
) -> torch.Tensor:
    """The per-voxel sum as one plain autograd graph over the batch (the blocked code's formula, same order of
    operations): differentiable any number of times, for a backward under ``create_graph=True``."""
    spatial_ndim = probs.ndim - 2
    current = (probs - target) ** 2 if mask is None else (probs - target) ** 2 * mask
    total = torch.zeros_like(current)
    for weight in weights:
        padded = torch.nn.functional.pad(current, [1, 1] * spatial_ndim)
        spread = current
        for axis in range(spatial_ndim):
            for start in (0, 2):
                index = [slice(None), slice(None)] + [slice(1, 1 + n) for n in current.shape[2:]]
                index[2 + axis] = slice(start, start + current.shape[2 + axis])
                spread = spread + padded[tuple(index)]
        spread = spread / (2 * spatial_ndim + 1)
        eroded = (spread - 0.5).masked_fill(spread < 0.5, 0.0)
        if mask is not None:
            eroded = eroded * mask
        dims = list(range(2, probs.ndim))
        low = eroded.amin(dims, keepdim=True)
        span = eroded.amax(dims, keepdim=True) - low
        varies = span != 0
        current = torch.where(varies, (eroded - low) / torch.where(varies, span, 1.0), eroded)
        total = total + current * weight
    return total


def _dense_gradients(ctx, output: torch.Tensor, grad_output: torch.Tensor) -> tuple:
    """The gradients of ``output`` (built from the saved probabilities and target) for the Function's inputs, with
    their own graph."""
    probs, target = ctx.saved_tensors[-3:-1]
    wanted = [x for x, needed in zip((probs, target), ctx.needs_input_grad[:2], strict=True) if needed]
    grads = iter(torch.autograd.grad(output, wanted, grad_output, create_graph=True))
    return (*(next(grads) if needed else None for needed in ctx.needs_input_grad[:2]), None, None)


def eroded_errors(
    probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, k: int, alpha: float, per_voxel: bool
) -> torch.Tensor:
    """Hausdorff-ER terms of probabilities and targets ``(B, C, *spatial)`` (mask ``(B, 1, *spatial)`` or ``None``).

    ``per_voxel``: :math:`\\sum_{k=1}^{K} k^\\alpha e^{(k)}` per voxel ``(B, C, *spatial)``; else its sum over the
    voxels per item and class ``(B, C)``. Differentiable with respect to ``probs`` and ``target`` (not twice).
    """
    weights = [depth**alpha for depth in range(1, k + 1)]
    target = target.to(probs.dtype)
    mask = None if mask is None else mask.to(probs.dtype).contiguous()
    function = _ErodedVoxels if per_voxel else _ErodedSums
    return function.apply(probs.contiguous(), target.contiguous(), mask, weights)
