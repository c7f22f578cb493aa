"""The hybrid encoder's CNN half: a ResNet-50-style stack of weight-standardised bottlenecks (2D or 3D).

TransUNet (Chen et al., 2021) takes the first three stages of the "R50" of Big Transfer (Kolesnikov et al.,
ECCV 2020): weight-standardised convolutions followed by GroupNorm, so that ImageNet-21k weights trained at
large batch transfer to small medical batches. The stem and the two strided stages downsample by 16 in all; the
three intermediate feature maps are the decoder's skip connections.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, Pool
from torch import nn

__all__ = ["Bottleneck", "ResNetEncoder", "WeightStandardizedConv"]

_CONV_FUNCTIONS = {2: F.conv2d, 3: F.conv3d}


class WeightStandardizedConv(nn.Module):
    r"""Convolution whose kernel is standardised per output channel before use (no bias).

    :math:`\hat W_o = (W_o - \mathrm{mean}(W_o)) / \sqrt{\mathrm{var}(W_o) + \epsilon}`, statistics over the
    input-channel and spatial axes of output channel :math:`o`; ``"same"`` padding for odd kernels.

    Reference: Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization",
    arXiv:1903.10520, 2019, as used by Big Transfer. ``eps=1e-5`` is the TransUNet authors' value.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.conv_function = _CONV_FUNCTIONS[spatial_dims]
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.conv.weight
        variance, mean = torch.var_mean(weight, dim=tuple(range(1, weight.ndim)), keepdim=True, unbiased=False)
        standardized = (weight - mean) / torch.sqrt(variance + self.eps)
        return self.conv_function(x, standardized, None, self.conv.stride, self.conv.padding)


class Bottleneck(nn.Module):
    """ResNet bottleneck unit: 1×1 reduce, 3×3 (strided), 1×1 expand, each conv followed by GroupNorm.

    ``relu(projection(x) + norm3(conv3(relu(norm2(conv2(relu(norm1(conv1(x)))))))))``; the projection (1×1
    strided conv + per-channel GroupNorm) replaces the identity when the stride or the width changes. The
    stride sits on the 3×3 conv, as in the TransUNet/BiT code (the original ResNet puts it on the first 1×1).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.conv1 = WeightStandardizedConv(spatial_dims, in_channels, mid_channels, 1)
        self.norm1 = nn.GroupNorm(norm_groups, mid_channels, eps=1e-6)
        self.conv2 = WeightStandardizedConv(spatial_dims, mid_channels, mid_channels, 3, stride=stride)
        self.norm2 = nn.GroupNorm(norm_groups, mid_channels, eps=1e-6)
        self.conv3 = WeightStandardizedConv(spatial_dims, mid_channels, out_channels, 1)
        self.norm3 = nn.GroupNorm(norm_groups, out_channels, eps=1e-6)
        self.projection: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.projection = nn.Sequential(
                WeightStandardizedConv(spatial_dims, in_channels, out_channels, 1, stride=stride),
                nn.GroupNorm(out_channels, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.projection is None else self.projection(x)
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(shortcut + y)


class ResNetEncoder(nn.Module):
    """Stem and three bottleneck stages of a BiT-style ResNet; returns the 1/16 map and three skip maps.

    Stem: 7×7 stride-2 weight-standardised conv, GroupNorm, ReLU, 3×3 stride-2 max-pool. Stage ``s`` (0, 1, 2)
    has ``layers[s]`` bottlenecks of ``width·2^s`` middle and ``4·width·2^s`` output channels; stages 1 and 2
    halve the resolution. Defaults ``layers=(3, 4, 9)``, ``width=64``, ``norm_groups=32`` are R50's first three
    stages as TransUNet uses them (Chen et al., arXiv:2102.04306, 2021; Kolesnikov et al., ECCV 2020).

    The max-pool pads by one (the standard ResNet pool; after a ReLU, zero padding equals -inf padding), so
    a side divisible by 16 gives maps of exactly 1/2, 1/4, 1/8 and 1/16 of it. The authors' code pools without
    padding and zero-pads the 1/4 skip map back to size instead; no weights depend on this.

    ``forward(x)`` returns ``(deepest, skips)``: ``deepest`` ``(B, 16·width, *S/16)`` and ``skips`` from
    coarse to fine, ``[(B, 8·width, *S/8), (B, 4·width, *S/4), (B, width, *S/2)]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        layers: Sequence[int] = (3, 4, 9),
        width: int = 64,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONV_FUNCTIONS:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(layers) != 3 or min(layers) < 1:
            raise ValueError(f"layers must give three stages of at least one unit each, got {tuple(layers)}")
        if width % norm_groups != 0:
            raise ValueError(f"width ({width}) must be divisible by norm_groups ({norm_groups})")
        self.width = width
        self.out_channels = 16 * width
        self.skip_channels = (8 * width, 4 * width, width)
        self.root = nn.Sequential()
        self.root.add_module("conv", WeightStandardizedConv(spatial_dims, in_channels, width, 7, stride=2))
        self.root.add_module("norm", nn.GroupNorm(norm_groups, width, eps=1e-6))
        self.root.add_module("relu", nn.ReLU())
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.stages = nn.ModuleList()
        in_stage = width
        for stage_index, num_units in enumerate(layers):
            mid = width * 2**stage_index
            out = 4 * mid
            stride = 1 if stage_index == 0 else 2
            units = [Bottleneck(spatial_dims, in_stage, mid, out, stride, norm_groups)]
            units += [Bottleneck(spatial_dims, out, mid, out, 1, norm_groups) for _ in range(num_units - 1)]
            self.stages.append(nn.Sequential(*units))
            in_stage = out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        half = self.root(x)
        quarter = self.stages[0](self.pool(half))
        eighth = self.stages[1](quarter)
        sixteenth = self.stages[2](eighth)
        return sixteenth, [eighth, quarter, half]
