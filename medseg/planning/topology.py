"""Network topology, patch and batch size within a memory budget, by nnU-Net's planning rules (re-implemented).

The network is MONAI's ``DynUNet`` (nnU-Net's U-Net): per stage a kernel size and a stride. Pooling follows the
spacing: an axis is downsampled only while its current spacing is within a factor 2 of the finest one and it keeps
at least ``MIN_EDGE`` voxels per side after pooling; its kernel is 3 once its spacing is within a factor 2 of the
finest, 1 before that (thick slices get in-plane convolutions first). The patch starts with the aspect ratio of
the voxel spacing, as large as ``256³`` (3D) or ``2048²`` (2D) voxels but not beyond the median image, and its
relatively largest axis shrinks until a batch of two fits the memory budget; the batch then grows into the rest of
the budget, capped so that one batch covers at most 5 % of the dataset's voxels.

Memory is estimated from the network's activations: every tensor a ``DynUNet`` stage keeps for the backward pass,
``BYTES_PER_ACTIVATION`` bytes per element (measured in float32 on the CPU, see docs/own_dataset.md), plus weights,
gradients and Adam's moments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BYTES_PER_ACTIVATION",
    "MIN_BATCH",
    "MIN_EDGE",
    "configure",
    "estimate_memory",
    "features_per_stage",
    "pooling",
]

#: Smallest feature map side at the bottleneck (nnU-Net's ``UNet_featuremap_min_edge_length``).
MIN_EDGE = 4
#: Fewest stages of a U-Net (MONAI's DynUNet needs three: input, one downsampling, bottleneck).
MIN_STAGES = 3
#: nnU-Net's smallest batch size.
MIN_BATCH = 2
#: Largest fraction of the dataset's voxels one batch may cover (nnU-Net's overfitting guard).
MAX_DATASET_COVERED = 0.05
#: Bytes of memory per counted activation element: float32 training on the CPU peaks at 7.5 (RSS increase / counted
#: elements, DynUNet on 48³ and 64 × 64 × 32 patches, batch 2, AdamW); rounded up. Mixed precision on a GPU stores
#: most activations in half precision, so there the estimate is an upper bound (not yet measured on a GPU).
BYTES_PER_ACTIVATION = 8.0


def pooling(spacing: Sequence[float], patch: Sequence[int], max_stages: int = 12) -> dict[str, Any]:
    """Strides and kernel sizes per stage for ``patch`` at ``spacing``, and the patch padded to fit them.

    Returns ``{"strides": [[1, ...], [2, 2, 1], ...], "kernel_size": [[3, 3, 1], ...], "patch_size": [...]}``;
    ``strides`` has one entry per stage, the first all ones; the patch is rounded up to a multiple of the total
    stride per axis.
    """
    dims = len(spacing)
    current_spacing = [float(s) for s in spacing]
    size = [float(p) for p in patch]
    kernel = [1] * dims
    strides, kernels = [[1] * dims], []
    pools = [0] * dims
    while len(strides) < max_stages:
        poolable = [a for a in range(dims) if size[a] >= 2 * MIN_EDGE]
        if not poolable:
            break
        finest = min(current_spacing[a] for a in poolable)
        poolable = [a for a in poolable if current_spacing[a] / finest < 2]
        if len(poolable) == 1 and size[poolable[0]] < 3 * MIN_EDGE:
            break  # one axis left: pool it only while it stays comfortably large
        finest_all = min(current_spacing)
        kernel = [3 if kernel[a] == 3 or current_spacing[a] / finest_all < 2 else 1 for a in range(dims)]
        step = [2 if a in poolable else 1 for a in range(dims)]
        for a in poolable:
            pools[a] += 1
            current_spacing[a] *= 2
            size[a] = math.ceil(size[a] / 2)
        strides.append(step)
        kernels.append(kernel)
    kernels.append([3] * dims)  # the bottleneck
    divisor = [2**p for p in pools]
    padded = [int(math.ceil(p / d) * d) for p, d in zip(patch, divisor, strict=True)]
    return {"strides": strides, "kernel_size": kernels, "patch_size": padded, "divisor": divisor}


def features_per_stage(stages: int, base: int, maximum: int) -> list[int]:
    """``base · 2^s`` features at stage ``s``, at most ``maximum`` (nnU-Net: 32 and 320 in 3D, 512 in 2D)."""
    return [min(base * 2**s, maximum) for s in range(stages)]


def _parameters(kernels: Sequence[Sequence[int]], filters: Sequence[int], in_channels: int, classes: int) -> int:
    """Weights of a DynUNet (two convolutions per encoder and decoder stage, transposed convolutions, output)."""
    total, previous = 0, in_channels
    for kernel, features in zip(kernels, filters, strict=True):
        volume = int(np.prod(kernel))
        total += volume * (previous * features + features * features) + 4 * features
        previous = features
    for stage in range(len(filters) - 2, -1, -1):
        volume = int(np.prod(kernels[stage]))
        total += 8 * filters[stage + 1] * filters[stage]  # transposed convolution (stride-size kernel, at most 2³)
        total += volume * (2 * filters[stage] * filters[stage] + filters[stage] * filters[stage]) + 4 * filters[stage]
    return total + filters[0] * classes


def estimate_memory(
    patch: Sequence[int],
    strides: Sequence[Sequence[int]],
    kernels: Sequence[Sequence[int]],
    filters: Sequence[int],
    in_channels: int,
    classes: int,
    batch: int,
    bytes_per_activation: float = BYTES_PER_ACTIVATION,
) -> float:
    """Estimated peak training memory in bytes of a ``DynUNet`` on ``batch`` patches (Adam, one step).

    Activations per sample: at each encoder stage two convolutions with their instance norms (4 tensors of the
    stage's features), at each decoder stage the transposed convolution, the concatenation (twice the features)
    and the block (4), plus input and logits; times ``bytes_per_activation`` and ``batch``. Parameters count four
    times (weights, gradients, Adam's two moments) in float32.
    """
    shape = np.asarray(patch, dtype=np.float64)
    elements = float(np.prod(shape)) * (in_channels + classes)
    for stage, (stride, features) in enumerate(zip(strides, filters, strict=True)):
        shape = np.ceil(shape / np.asarray(stride))
        voxels = float(np.prod(shape))
        elements += (4 if stage == len(filters) - 1 else 4 + 7) * features * voxels
    weights = _parameters(kernels, filters, in_channels, classes)
    return elements * bytes_per_activation * batch + 16.0 * weights


def _initial_patch(spacing: Sequence[float], median_shape: Sequence[float]) -> list[int]:
    """The spacing's aspect ratio at 256³ (3D) or 2048² (2D) voxels, clipped to the median image shape."""
    inverse = 1.0 / np.asarray(spacing, dtype=np.float64)
    target = 256.0**3 if len(spacing) == 3 else 2048.0**2
    patch = inverse * (target / np.prod(inverse)) ** (1.0 / len(spacing))
    return [max(1, int(min(round(p), m))) for p, m in zip(patch, median_shape, strict=True)]


def configure(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    in_channels: int,
    classes: int,
    memory_gb: float,
    base_features: int,
    max_features: int,
    dataset_voxels: float,
) -> dict[str, Any]:
    """Patch size, batch size and DynUNet topology for one configuration within ``memory_gb`` of memory.

    Returns ``patch_size``, ``batch_size``, ``strides``, ``kernel_size``, ``filters``, ``memory_budget_gb`` and
    ``estimated_memory_gb`` (the estimate for the chosen patch and batch).
    """
    budget = memory_gb * 1024**3
    patch = _initial_patch(spacing, median_shape)
    if len(pooling(spacing, patch)["strides"]) < MIN_STAGES:  # tiny images: a patch larger than the image, padded
        finest = min(spacing)
        patch = [max(p, 4 * MIN_EDGE) if s / finest < 2 else p for p, s in zip(patch, spacing, strict=True)]

    def topology(p: Sequence[int]) -> tuple[dict[str, Any], list[int], float]:
        net = pooling(spacing, p)
        filters = features_per_stage(len(net["strides"]), base_features, max_features)
        memory = estimate_memory(
            net["patch_size"], net["strides"], net["kernel_size"], filters, in_channels, classes, 1
        )
        return net, filters, memory

    net, filters, per_sample = topology(patch)
    if len(net["strides"]) < MIN_STAGES:
        raise ValueError(f"cannot plan a U-Net of {MIN_STAGES} stages for images of median shape {list(median_shape)}")
    weights_memory = estimate_memory(net["patch_size"], net["strides"], net["kernel_size"], filters, 0, 0, 0)
    while (per_sample - weights_memory) * MIN_BATCH + weights_memory > budget and max(patch) > 1:
        ratios = [p / m for p, m in zip(net["patch_size"], median_shape, strict=True)]
        order = np.argsort(ratios)[::-1]
        axis = next((int(a) for a in order if patch[a] > net["divisor"][a]), int(order[0]))
        patch[axis] = max(1, net["patch_size"][axis] - net["divisor"][axis])
        net, filters, per_sample = topology(patch)
        weights_memory = estimate_memory(net["patch_size"], net["strides"], net["kernel_size"], filters, 0, 0, 0)
    activation = per_sample - weights_memory
    batch = int((budget - weights_memory) // activation) if activation > 0 else MIN_BATCH
    cap = round(dataset_voxels * MAX_DATASET_COVERED / float(np.prod(net["patch_size"])))
    batch = max(MIN_BATCH, min(batch, cap))
    return {
        "patch_size": [int(p) for p in net["patch_size"]],
        "batch_size": int(batch),
        "strides": net["strides"],
        "kernel_size": net["kernel_size"],
        "filters": filters,
        "memory_budget_gb": float(memory_gb),
        "estimated_memory_gb": round((activation * batch + weights_memory) / 1024**3, 3),
    }
