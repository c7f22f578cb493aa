"""TransUNet: a ResNet encoder, a ViT over its 1/16 feature map, and a cascaded upsampler with skips (2D/3D)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, MLPBlock, UpSample
from monai.networks.layers import Conv
from torch import nn

from .resnet_encoder import ResNetEncoder
from .transunet_weights import LoadReport, load_checkpoint, resize_position_embedding

__all__ = ["DecoderBlock", "SelfAttention", "TransUNet", "TransUNetOutput", "TransformerLayer"]

DOWNSAMPLING = 16
"""Total stride of the ResNet encoder: spatial sizes are padded to a multiple of this."""


class TransUNetOutput(NamedTuple):
    """``TransUNet.forward(x, return_features=True)``: logits and the decoder's last feature map."""

    logits: torch.Tensor
    features: torch.Tensor


class SelfAttention(nn.Module):
    r"""Multi-head scaled dot-product self-attention over a token sequence ``(B, N, hidden)``.

    :math:`\mathrm{softmax}(QK^\top/\sqrt{d_h})V` per head, then an output projection; separate query, key and
    value projections with biases, as in ViT (Dosovitskiy et al., ICLR 2021). ``dropout_rate`` applies to the
    attention weights and to the projected output (0.0 in TransUNet).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float = 0.0) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.dropout_rate = dropout_rate
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.out_dropout = nn.Dropout(dropout_rate)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = tokens.shape

        def split_heads(projected: torch.Tensor) -> torch.Tensor:
            return projected.view(batch, length, self.num_heads, hidden // self.num_heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split_heads(self.query(tokens)),
            split_heads(self.key(tokens)),
            split_heads(self.value(tokens)),
            dropout_p=self.dropout_rate if self.training else 0.0,
        )
        return self.out_dropout(self.out(attended.transpose(1, 2).reshape(batch, length, hidden)))


class TransformerLayer(nn.Module):
    """Pre-norm ViT encoder layer: ``x + attention(norm1(x))``, then ``x + mlp(norm2(x))``.

    LayerNorm ``eps=1e-6`` (the JAX ViT value the pretrained weights were trained with); the MLP is MONAI's
    ``MLPBlock`` (Linear, GELU, dropout, Linear, dropout).
    """

    def __init__(
        self, hidden_size: int, mlp_dim: int, num_heads: int, dropout_rate: float, attention_dropout_rate: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attention = SelfAttention(hidden_size, num_heads, attention_dropout_rate)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = MLPBlock(hidden_size, mlp_dim, dropout_rate)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attention(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class DecoderBlock(nn.Module):
    """One step of the cascaded upsampler: ×2 (bi/tri)linear upsampling, concatenate the skip, two conv-BN-ReLU.

    ``align_corners=True`` as the authors' ``UpsamplingBilinear2d``; convolutions are 3×3(×3) without bias.
    """

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = UpSample(
            spatial_dims, scale_factor=2, mode="nontrainable", pre_conv=None, interp_mode="linear", align_corners=True
        )
        self.conv1 = Convolution(
            spatial_dims, in_channels + skip_channels, out_channels, act="RELU", norm="BATCH", bias=False
        )
        self.conv2 = Convolution(spatial_dims, out_channels, out_channels, act="RELU", norm="BATCH", bias=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.upsample(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes symmetrically up to a multiple; also return the slices that undo it."""
    sizes = x.shape[2:]
    totals = [(-size) % multiple for size in sizes]
    befores = [total // 2 for total in totals]
    crop = (
        slice(None),
        slice(None),
        *(slice(before, before + size) for before, size in zip(befores, sizes, strict=True)),
    )
    if not any(totals):
        return x, crop
    pad: list[int] = []
    for total, before in zip(reversed(totals), reversed(befores), strict=True):  # F.pad lists the last axis first
        pad += [before, total - before]
    return F.pad(x, pad), crop


class TransUNet(nn.Module):
    r"""TransUNet: CNN-Transformer hybrid encoder and cascaded upsampler with skip connections, 2D or 3D.

    Encoder: a BiT-style ResNet (three stages, ``resnet_layers`` bottlenecks each, weight-standardised convs and
    GroupNorm, see :class:`ResNetEncoder`) reduces the input by 16; a 1×1 convolution embeds every position of
    that map as a token (1×1 "patches"), a learnt position embedding is added, and ``num_layers`` pre-norm
    Transformer layers with a final LayerNorm encode the sequence. Decoder: the tokens are reshaped back to the
    1/16 grid, a 3×3 conv-BN-ReLU maps them to ``decoder_head_channels``, and four :class:`DecoderBlock` s
    upsample ×2 each to ``decoder_channels``, the first ``n_skip`` of them concatenating the encoder's 1/8,
    1/4 and 1/2 maps; a 3×3 convolution gives ``out_channels`` logits at full resolution.

    Defaults are R50-ViT-B/16 as in the paper's Synapse experiments: ``resnet_layers=(3, 4, 9)``, hidden 768,
    12 layers, 12 heads, MLP 3072, dropout 0.1 (0.0 on attention), decoder (256, 128, 64, 16) after a 512-channel
    head, ``n_skip=3``, ``img_size=224`` (``vit_seg_configs.get_r50_b16_config`` and ``train.py`` of the
    authors' code). :meth:`tiny` gives a CPU-test size.

    Input sizes: any. Each spatial side is zero-padded symmetrically to a multiple of 16 and the output is
    cropped back, so ``(B, in_channels, *S)`` gives ``(B, out_channels, *S)``. ``img_size`` fixes the grid of
    the learnt position embedding, ``ceil(img_size / 16)`` per side; inputs with another grid use it resized
    (bi/trilinear, corners aligned, as the authors resize pretrained embeddings).

    Pretrained weights: ``pretrained`` (or :meth:`load_pretrained`) takes a local ``.pt``/``.pth`` state dict of
    this class, or an ``.npz`` in the JAX naming of Google's R50+ViT-B/16 ImageNet-21k checkpoint (encoder and
    Transformer only); nothing is downloaded. Details in :func:`medseg.networks.transunet_weights.load_checkpoint`.

    Loss hook: ``forward(x, return_features=True)`` returns :class:`TransUNetOutput` ``(logits, features)`` with
    the decoder's last feature map ``(B, decoder_channels[-1], *S)``; the classifier applied to it is
    ``self.segmentation_head`` (a 3×3 convolution: ``.weight``, ``.bias``). The default output is the plain
    logits tensor, as MONAI's inferers expect.

    Reference: Chen, Lu, Yu, Luo, Adeli, Wang, Lu, Yuille, Zhou, "TransUNet: Transformers Make Strong Encoders
    for Medical Image Segmentation", arXiv:2102.04306, 2021.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 9,
        img_size: Sequence[int] | int = 224,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        resnet_layers: Sequence[int] = (3, 4, 9),
        resnet_width: int = 64,
        norm_groups: int = 32,
        decoder_head_channels: int = 512,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        n_skip: int = 3,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        pretrained: str | Path | None = None,
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: input channels (the stem convolution takes them directly).
            out_channels: number of classes (logit channels).
            img_size: training input size, an int or one per spatial axis: sets the position-embedding grid.
            hidden_size, num_layers, num_heads, mlp_dim: the Transformer's width, depth, heads and MLP width.
            resnet_layers: bottleneck units in each of the three ResNet stages.
            resnet_width: channels of the ResNet stem (stage outputs are 4, 8 and 16 times it).
            norm_groups: GroupNorm groups in the ResNet; must divide ``resnet_width``.
            decoder_head_channels: channels of the conv that maps the tokens back to a feature map.
            decoder_channels: output channels of the four upsampling blocks, coarse to fine.
            n_skip: how many of the encoder's 1/8, 1/4, 1/2 maps the decoder concatenates (0 to 3).
            dropout_rate: dropout after the embedding and in the MLPs.
            attention_dropout_rate: dropout on attention weights and the attention output.
            pretrained: a local checkpoint (``.pt``/``.pth`` or ``.npz``) loaded strictly after construction.

        Raises:
            ValueError: on an unsupported ``spatial_dims``, sizes that do not fit together, or a checkpoint
                that does not fit the network.
        """
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        sizes = (img_size,) * spatial_dims if isinstance(img_size, int) else tuple(img_size)
        if len(sizes) != spatial_dims or min(sizes) < 1:
            raise ValueError(f"img_size must be a positive int or {spatial_dims} positive ints, got {img_size}")
        if len(decoder_channels) != 4:
            raise ValueError(
                f"decoder_channels needs four entries (four ×2 steps from 1/16), got {tuple(decoder_channels)}"
            )
        if not 0 <= n_skip <= 3:
            raise ValueError(f"n_skip must be between 0 and 3 (the encoder has three skip maps), got {n_skip}")
        if not (0.0 <= dropout_rate <= 1.0 and 0.0 <= attention_dropout_rate <= 1.0):
            raise ValueError(f"dropout rates must lie in [0, 1], got {dropout_rate} and {attention_dropout_rate}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_skip = n_skip
        self.grid_size = tuple(-(-size // DOWNSAMPLING) for size in sizes)

        self.encoder = ResNetEncoder(spatial_dims, in_channels, resnet_layers, resnet_width, norm_groups)
        self.patch_embedding = Conv[Conv.CONV, spatial_dims](self.encoder.out_channels, hidden_size, kernel_size=1)
        self.position_embedding = nn.Parameter(torch.zeros(1, hidden_size, *self.grid_size))
        self.embedding_dropout = nn.Dropout(dropout_rate)
        self.transformer = nn.ModuleList(
            TransformerLayer(hidden_size, mlp_dim, num_heads, dropout_rate, attention_dropout_rate)
            for _ in range(num_layers)
        )
        self.transformer_norm = nn.LayerNorm(hidden_size, eps=1e-6)

        self.decoder_head = Convolution(
            spatial_dims, hidden_size, decoder_head_channels, act="RELU", norm="BATCH", bias=False
        )
        skip_channels = [*self.encoder.skip_channels[:n_skip], *[0] * (4 - n_skip)]
        block_inputs = [decoder_head_channels, *decoder_channels[:-1]]
        self.decoder_blocks = nn.ModuleList(
            DecoderBlock(spatial_dims, block_in, skip, block_out)
            for block_in, skip, block_out in zip(block_inputs, skip_channels, decoder_channels, strict=True)
        )
        self.segmentation_head = Conv[Conv.CONV, spatial_dims](
            decoder_channels[-1], out_channels, kernel_size=3, padding=1
        )
        if pretrained is not None:
            self.load_pretrained(pretrained)

    @classmethod
    def tiny(cls, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 3, **overrides: Any) -> TransUNet:
        """CPU-test size, 0.12M parameters in 2D and 0.26M in 3D: the full design, 2 layers, 1 unit per stage."""
        config: dict[str, Any] = {
            "img_size": 32,
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "mlp_dim": 64,
            "resnet_layers": (1, 1, 1),
            "resnet_width": 8,
            "norm_groups": 4,
            "decoder_head_channels": 32,
            "decoder_channels": (32, 16, 8, 8),
        }
        config.update(overrides)
        return cls(spatial_dims, in_channels, out_channels, **config)

    def load_pretrained(self, path: str | Path, strict: bool = True) -> LoadReport:
        """Load a local ``.pt``/``.pth`` state dict or a ViT ``.npz``; see :func:`load_checkpoint`."""
        return load_checkpoint(self, path, strict=strict)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor | TransUNetOutput:
        """``(B, in_channels, *S)`` -> logits ``(B, out_channels, *S)``, or ``TransUNetOutput`` when asked."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, {', '.join('S' * self.spatial_dims)}) for this "
                f"{self.spatial_dims}D TransUNet, got {tuple(x.shape)}"
            )
        padded, crop = _pad_to_multiple(x, DOWNSAMPLING)
        deepest, skips = self.encoder(padded)
        embedded = self.patch_embedding(deepest)
        embedded = embedded + resize_position_embedding(self.position_embedding, embedded.shape[2:])
        tokens = self.embedding_dropout(embedded.flatten(2).transpose(1, 2))
        for layer in self.transformer:
            tokens = layer(tokens)
        tokens = self.transformer_norm(tokens)
        decoded = self.decoder_head(tokens.transpose(1, 2).reshape(embedded.shape))
        for index, block in enumerate(self.decoder_blocks):
            decoded = block(decoded, skips[index] if index < self.n_skip else None)
        logits = self.segmentation_head(decoded)[crop]
        if return_features:
            return TransUNetOutput(logits, decoded[crop])
        return logits
