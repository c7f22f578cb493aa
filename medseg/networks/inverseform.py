"""InverseForm's inverse-transformation network: regress the 2D affine transform between two boundary maps.

Borse et al. train a network that, given two boundary maps, predicts the transform that maps one onto the other;
frozen, it scores a predicted boundary by how far that transform is from the identity
(:class:`medseg.losses.InverseFormLoss`). This module holds the network, its checkpoint format, the synthetic
training data (random shapes, random affine warps) and the training loop behind ``scripts/train_inverseform.py``.

Differences from the authors' network (``InverseNet``: an MLP on two flattened 224×224 tiles, 100M weights, four
outputs): a small strided CNN on the two maps stacked as channels (tiles of ``tile_size``, 64 by default), which
trains on a CPU in minutes, and six outputs, the full 2×3 affine part of the 3×3 matrix.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHECKPOINT_KIND",
    "InverseTransformNet",
    "boundary_map",
    "load_inverse_transform_net",
    "main",
    "random_affine",
    "random_shape_masks",
    "save_inverse_transform_net",
    "synthetic_pairs",
    "train_inverse_transform_net",
]

CHECKPOINT_KIND = "medseg.InverseTransformNet"
"""The ``kind`` entry of a checkpoint written by :func:`save_inverse_transform_net`."""


class InverseTransformNet(nn.Module):
    r"""Predicts the affine transform :math:`\theta` (3×3, last row ``0 0 1``) with ``moved(u) = fixed(θ u)``.

    ``u`` are the normalised coordinates of ``torch.nn.functional.affine_grid`` (x, y in [-1, 1]), so that
    ``grid_sample(fixed, affine_grid(θ[:, :2]))`` is ``moved``; identical maps give the identity. Input: two
    ``(N, 1, tile_size, tile_size)`` maps, stacked as channels, through ``len(channels)`` stride-2 3×3
    convolutions with ReLU, then a hidden layer of ``hidden`` units; the last layer gives the six entries of
    :math:`\theta - I` (top two rows).

    Args:
        tile_size: side of the square tiles the network reads; a multiple of ``2 ** len(channels)``.
        channels: output channels of the strided convolutions.
        hidden: width of the hidden fully connected layer.
    """

    def __init__(self, tile_size: int = 64, channels: Sequence[int] = (16, 32, 64, 64), hidden: int = 128) -> None:
        super().__init__()
        stride = 2 ** len(channels)
        if not channels or tile_size < stride or tile_size % stride:
            raise ValueError(
                f"tile_size must be a positive multiple of 2**len(channels) = {stride}, got {tile_size} "
                f"with channels {tuple(channels)}"
            )
        self.tile_size = int(tile_size)
        self.channels = tuple(int(c) for c in channels)
        self.hidden = int(hidden)
        layers: list[nn.Module] = []
        previous = 2
        for width in self.channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.ReLU()]
            previous = width
        self.encoder = nn.Sequential(*layers)
        cells = (self.tile_size // stride) ** 2
        self.regressor = nn.Sequential(
            nn.Flatten(), nn.Linear(previous * cells, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 6)
        )

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (stored in checkpoints)."""
        return {"tile_size": self.tile_size, "channels": list(self.channels), "hidden": self.hidden}

    def forward(self, moved: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """``(N, 1, T, T)`` twice -> ``(N, 3, 3)`` affine matrices."""
        expected = (1, self.tile_size, self.tile_size)
        if moved.ndim != 4 or moved.shape[1:] != expected or fixed.shape != moved.shape:
            raise ValueError(
                f"expected two (N, {', '.join(map(str, expected))}) maps, got {tuple(moved.shape)} and "
                f"{tuple(fixed.shape)}"
            )
        offset = self.regressor(self.encoder(torch.cat([moved, fixed], dim=1))).view(-1, 2, 3)
        theta = F.pad(offset, (0, 0, 0, 1))  # last row 0 0 0: the identity below adds the 1
        return theta + torch.eye(3, dtype=theta.dtype, device=theta.device)


def save_inverse_transform_net(net: InverseTransformNet, path: str | Path, **metadata: Any) -> Path:
    """Write ``net`` (config and weights) and ``metadata`` (e.g. training settings) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"kind": CHECKPOINT_KIND, "config": net.config, "state_dict": state, "metadata": metadata}, path)
    return path


def load_inverse_transform_net(path: str | Path) -> InverseTransformNet:
    """Read a checkpoint written by :func:`save_inverse_transform_net`; the network comes back frozen, in eval mode.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says how to train one).
        ValueError: ``path`` is not a readable torch file, or not an :class:`InverseTransformNet` checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"InverseForm checkpoint {str(path)!r} does not exist; train one with "
            f"`python scripts/train_inverseform.py --out {path}`"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"InverseForm checkpoint {str(path)!r} is not a readable torch file: {error}") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != CHECKPOINT_KIND:
        raise ValueError(
            f"InverseForm checkpoint {str(path)!r} is not an InverseTransformNet checkpoint (expected a dict with "
            f"kind={CHECKPOINT_KIND!r}, config and state_dict, as scripts/train_inverseform.py writes)"
        )
    try:
        net = InverseTransformNet(**checkpoint["config"])
        net.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise ValueError(f"InverseForm checkpoint {str(path)!r} is corrupt: {error}") from error
    return net.requires_grad_(False).eval()


def boundary_map(maps: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    r"""Soft in-plane boundary of ``(N, 1, H, W)`` maps in [0, 1]: the morphological gradient over 3×3 windows.

    :math:`b(x) = \max_{y \in W(x)} p(y) - \min_{y \in W(x)} p(y)`, ``W(x)`` the 3×3 window (clipped at the image
    border, which is no boundary). Binary masks give 1 on the layers on both sides of a contour. ``known``
    (``(N, 1, H, W)`` bool): windows read only known voxels, and unknown voxels get 0, so that nothing at an
    unknown voxel changes the map.
    """
    if known is None:
        return F.max_pool2d(maps, 3, 1, 1) + F.max_pool2d(-maps, 3, 1, 1)
    highest = F.max_pool2d(torch.where(known, maps, -1.0), 3, 1, 1)  # values lie in [0, 1]: -1 and 2 never win
    lowest = -F.max_pool2d(-torch.where(known, maps, 2.0), 3, 1, 1)
    return torch.where(known, highest - lowest, 0.0)


def random_shape_masks(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, 1, size, size)`` binary masks, each the union of one to three random star-shaped blobs.

    A blob's radius varies with the angle by four random harmonics, so that, unlike ellipses (symmetric under a
    continuous group of affine maps), a warp of it is identifiable from its boundary.
    """
    axis = torch.linspace(-1.0, 1.0, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    masks = torch.zeros(count, 1, size, size)
    shapes = torch.randint(1, 4, (count,), generator=generator)
    for index in range(3):
        active = (shapes > index).view(-1, 1, 1, 1)
        centre = (torch.rand(count, 2, generator=generator) - 0.5) * 1.2
        mean_radius = 0.2 + 0.3 * torch.rand(count, 1, 1, generator=generator)
        dx, dy = x - centre[:, :1, None], y - centre[:, 1:, None]
        angle = torch.atan2(dy, dx)
        radius = torch.ones_like(angle)
        for harmonic in range(1, 5):
            amplitude = 0.3 / harmonic * torch.rand(count, 1, 1, generator=generator)
            phase = 2 * math.pi * torch.rand(count, 1, 1, generator=generator)
            radius = radius + amplitude * torch.cos(harmonic * angle + phase)
        inside = (dx**2 + dy**2 <= (mean_radius * radius) ** 2).unsqueeze(1) & active
        masks = torch.maximum(masks, inside.float())
    return masks


def random_affine(
    count: int,
    generator: torch.Generator,
    rotation_deg: float = 10.0,
    scale: float = 0.1,
    shear: float = 0.1,
    translation: float = 0.1,
    identity_fraction: float = 0.1,
) -> torch.Tensor:
    """``(count, 3, 3)`` random affine matrices near the identity; ``identity_fraction`` of them exactly identity.

    Rotation uniform in ±``rotation_deg``, per-axis scale in 1 ± ``scale``, shear in ±``shear``, translation in
    ±``translation`` (normalised units: 0.1 is 5 % of the tile side).
    """

    def uniform(half_width: float, *shape: int) -> torch.Tensor:
        return (2 * torch.rand(*shape, generator=generator) - 1) * half_width

    angle = torch.deg2rad(uniform(rotation_deg, count))
    scales = 1 + uniform(scale, count, 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shearing = torch.eye(2).repeat(count, 1, 1)
    shearing[:, 0, 1] = uniform(shear, count)
    linear = rotation @ shearing @ torch.diag_embed(scales)
    theta = torch.eye(3).repeat(count, 1, 1)
    theta[:, :2, :2] = linear
    theta[:, :2, 2] = uniform(translation, count, 2)
    identity = torch.rand(count, generator=generator) < identity_fraction
    theta[identity] = torch.eye(3)
    return theta


def synthetic_pairs(
    count: int, tile_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training pairs ``(moved, fixed, theta)``: boundary maps of random blobs and of their affine warps.

    ``fixed`` is the boundary of a random shape mask, ``moved`` the boundary of that mask resampled (bilinear) at
    ``θ u``, so ``moved(u) = fixed(θ u)`` up to resampling: the relation :class:`InverseTransformNet` learns.
    """
    masks = random_shape_masks(count, tile_size, generator)
    theta = random_affine(count, generator)
    grid = F.affine_grid(theta[:, :2], list(masks.shape), align_corners=False)
    warped = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return boundary_map(warped), boundary_map(masks), theta


def train_inverse_transform_net(
    steps: int = 3000,
    batch_size: int = 32,
    tile_size: int = 64,
    channels: Sequence[int] = (16, 32, 64, 64),
    hidden: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 0,
) -> tuple[InverseTransformNet, dict[str, float]]:
    """Train :class:`InverseTransformNet` on fresh synthetic pairs each step (Adam, MSE on θ's six entries).

    Returns the network and held-out numbers on 512 pairs: ``mse`` (mean squared error of θ's six entries),
    ``identity_mse`` (the same for always answering the identity) and ``seconds`` of training.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = InverseTransformNet(tile_size, channels, hidden)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        moved, fixed, theta = synthetic_pairs(batch_size, tile_size, generator)
        loss = F.mse_loss(net(moved, fixed)[:, :2], theta[:, :2])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if log_every and (step % log_every == 0 or step == steps):
            print(f"step {step}/{steps}: mse {loss.item():.5f}")
    seconds = time.perf_counter() - start
    net.eval()
    held_out = torch.Generator().manual_seed(seed + 1)
    moved, fixed, theta = synthetic_pairs(512, tile_size, held_out)
    with torch.no_grad():
        mse = F.mse_loss(net(moved, fixed)[:, :2], theta[:, :2]).item()
    identity_mse = F.mse_loss(torch.eye(3)[:2].expand(512, 2, 3), theta[:, :2]).item()
    return net.requires_grad_(False), {"mse": mse, "identity_mse": identity_mse, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``scripts/train_inverseform.py``: train on synthetic pairs and write a checkpoint."""
    parser = argparse.ArgumentParser(description="Train InverseForm's inverse-transformation network (CPU, minutes).")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint path to write (.pt)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tile-size", type=int, default=64)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 64])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=250)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: these small tensors run slower on a pool)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net, report = train_inverse_transform_net(
        args.steps, args.batch_size, args.tile_size, args.channels, args.hidden, args.lr, args.seed, args.log_every
    )
    save_inverse_transform_net(net, args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed, **report)
    print(
        f"held-out mse {report['mse']:.5f} (identity {report['identity_mse']:.5f}), "
        f"{report['seconds']:.0f} s; wrote {args.out}"
    )
    return 0
