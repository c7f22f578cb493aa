"""Active boundary loss's class-by-class KL divergences (medseg.losses._neighbour_kl) and its separable dilation,
against dense recomputations: the whole-batch formulas they replace, MONAI-free plain torch."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from medseg.losses import ActiveBoundaryLoss
from medseg.losses._neighbour_kl import NeighbourDivergence, forward_divergences
from medseg.losses.boundary import _dilated

IGNORE = 255


def log_probs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(2 * torch.randn(*shape, generator=g, dtype=torch.float64), 1)


@pytest.mark.parametrize("spatial", [(7, 6), (5, 4, 6)], ids=["2d", "3d"])
def test_forward_divergences_are_the_dense_kl_along_each_axis(spatial):
    lp = log_probs((2, 4, *spatial), seed=1)
    for axis, (ours, given) in enumerate(zip(forward_divergences(lp), forward_divergences(lp, lp.exp()), strict=True)):
        size = spatial[axis]
        here, ahead = lp.narrow(2 + axis, 0, size - 1), lp.narrow(2 + axis, 1, size - 1)
        dense = (here.exp() * (here - ahead)).sum(1)
        assert torch.allclose(ours, dense, atol=1e-14) and torch.allclose(given, dense, atol=1e-14)


def neighbour_case(spatial, seed):
    """Log-probabilities, per-item voxel indices of some centres' neighbours (centre itself where outside), counts."""
    lp = log_probs((2, 3, *spatial), seed)
    g = torch.Generator().manual_seed(seed)
    steps = torch.tensor([s for s in itertools.product((-1, 0, 1), repeat=len(spatial)) if any(s)])
    voxels = [torch.randperm(torch.Size(spatial).numel(), generator=g)[:5] for _ in range(2)]
    coords = torch.stack(torch.unravel_index(torch.cat(voxels), spatial), 1)
    strides = torch.tensor([torch.Size(spatial[d + 1 :]).numel() for d in range(len(spatial))])
    around = coords.unsqueeze(1) + steps
    inside = ((around >= 0) & (around < torch.tensor(spatial))).all(-1)
    centre = (coords * strides).sum(1, keepdim=True)
    neighbours = torch.where(inside, (around * strides).sum(-1), centre)
    return lp, torch.cat(voxels), neighbours, [5, 5]


@pytest.mark.parametrize("spatial", [(6, 5), (4, 5, 3)], ids=["2d", "3d"])
def test_neighbour_divergence_matches_the_dense_gather_and_its_gradient(spatial):
    lp, centres, neighbours, counts = neighbour_case(spatial, seed=2)
    item = torch.repeat_interleave(torch.arange(2), torch.tensor(counts))
    flat = lp.flatten(2)  # (B, C, N)
    centre = flat[item, :, centres].clone().requires_grad_(True)  # (M, C)
    ours = NeighbourDivergence.apply(centre, lp, lp.exp(), neighbours, counts)
    nbr = flat[item.unsqueeze(1), :, neighbours]  # (M, K, C), constants
    dense = (nbr.exp() * (nbr - centre.unsqueeze(1))).sum(-1)
    assert torch.allclose(ours, dense, atol=1e-14)
    upstream = torch.rand_like(ours)
    (grad_ours,) = torch.autograd.grad(ours, centre, upstream)
    (grad_dense,) = torch.autograd.grad(dense, centre, upstream)
    assert torch.allclose(grad_ours, grad_dense, atol=1e-14)
    probs = lp.exp()
    assert torch.autograd.gradcheck(lambda c: NeighbourDivergence.apply(c, lp, probs, neighbours, counts), (centre,))
    assert torch.autograd.gradgradcheck(
        lambda c: NeighbourDivergence.apply(c, lp, probs, neighbours, counts), (centre,)
    )


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 3)], ids=["2d", "3d"])
def test_separable_dilation_is_max_pooling(spatial):
    seeds = (torch.rand(2, *spatial, generator=torch.Generator().manual_seed(3)) > 0.85).double()
    pool = F.max_pool2d if len(spatial) == 2 else F.max_pool3d
    assert torch.equal(_dilated(seeds), pool(seeds.unsqueeze(1), 3, stride=1, padding=1)[:, 0])


@pytest.mark.parametrize("spatial", [(9, 8), (5, 6, 4)], ids=["2d", "3d"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_detached_neighbours_score_as_the_dense_path(spatial, reduction):
    # detach_neighbours=False keeps the dense padded gather; both paths compute the same values
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 1, *spatial), generator=g)
    y[:, :, : spatial[0] // 2] = 1
    y[0, 0, -1] = IGNORE
    options = {"max_boundary_ratio": 0.3, "ignore_index": IGNORE, "reduction": reduction}
    fast = ActiveBoundaryLoss(detach_neighbours=True, **options)(x, y)
    dense = ActiveBoundaryLoss(detach_neighbours=False, **options)(x, y)
    assert fast.abs().sum() > 0 and torch.allclose(fast, dense, atol=1e-14)


@pytest.mark.parametrize("spatial", [(6, 5), (4, 5, 3)], ids=["2d", "3d"])
def test_float32_divergences_of_near_equal_distributions_stay_accurate(spatial):
    # both are computed as Σ p log p − Σ p log q (the negentropy gathered once per voxel): with peaked, almost equal
    # distributions the two sums nearly cancel; the float32 result must still match the float64 dense KL closely
    g = torch.Generator().manual_seed(5)
    logits = 8 * torch.randn(2, 4, *[1] * len(spatial), generator=g, dtype=torch.float64)
    lp64 = torch.log_softmax(logits + 1e-3 * torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64), 1)
    lp32 = lp64.float()
    for axis, ours in enumerate(forward_divergences(lp32)):
        size = spatial[axis]
        here, ahead = lp64.narrow(2 + axis, 0, size - 1), lp64.narrow(2 + axis, 1, size - 1)
        assert torch.allclose(ours.double(), (here.exp() * (here - ahead)).sum(1), atol=2e-6)
    _, centres, neighbours, counts = neighbour_case(spatial, seed=6)
    item = torch.repeat_interleave(torch.arange(2), torch.tensor(counts))
    centre64 = lp64.flatten(2)[item, :, centres]
    nbr = lp64.flatten(2)[item.unsqueeze(1), :, neighbours]
    dense = (nbr.exp() * (nbr - centre64.unsqueeze(1))).sum(-1)
    ours = NeighbourDivergence.apply(centre64.float(), lp32, lp32.exp(), neighbours, counts)
    assert dense.abs().max() < 1e-4 and torch.allclose(ours.double(), dense, atol=2e-6)
