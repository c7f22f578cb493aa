"""KL divergences between voxels and their neighbours, one class at a time (no ``(…, C)`` copies of the batch).

Used by :class:`~medseg.losses.ActiveBoundaryLoss`: the divergence between each voxel and the next along every
axis (its predicted boundary), and between a few voxels and their 8 (26) neighbours (its direction logits). Looping
over the C classes of a channel-first ``(B, C, *spatial)`` tensor reads each class plane where it lies, so neither a
channel-last copy nor a padded one is made, and the neighbours' probabilities are recomputed in the backward
instead of kept (``M × 26 × C`` values).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def forward_divergences(log_probs: torch.Tensor) -> list[torch.Tensor]:
    r""":math:`\mathrm{KL}(p_x \| p_{x + e_a}) = \sum_c p_{xc} (\log p_{xc} - \log p_{x + e_a, c})` for each axis a,
    ``(B, *spatial)`` with that axis one shorter, from log-probabilities ``(B, C, *spatial)``."""
    batch, classes, *spatial = log_probs.shape
    out = []
    for axis, size in enumerate(spatial):
        shape = [batch, *spatial]
        shape[1 + axis] = size - 1
        out.append(log_probs.new_zeros(shape))
    for c in range(classes):
        plane = log_probs[:, c]
        probs = plane.exp()
        for axis, size in enumerate(spatial):
            here, ahead = plane.narrow(1 + axis, 0, size - 1), plane.narrow(1 + axis, 1, size - 1)
            out[axis].addcmul_(probs.narrow(1 + axis, 0, size - 1), here - ahead)
    return out


class NeighbourDivergence(torch.autograd.Function):
    r""":math:`\mathrm{KL}(p_n \| p_x) = \sum_c p_{nc} (\log p_{nc} - \log p_{xc})` of M centres x, K neighbours n each.

    ``forward(centre, log_probs, neighbours, counts)``: ``centre`` ``(M, C)`` log-probabilities of the centres (the
    gradient flows to them), ``log_probs`` ``(B, C, *spatial)`` contiguous, detached (the neighbours are constants),
    ``neighbours`` ``(M, K)`` voxel indices of the neighbours within their item (flat over ``spatial``), the rows
    sorted by item with ``counts[b]`` rows for item b. Returns ``(M, K)``. Backward:
    :math:`\partial / \partial \log p_{xc} = -\sum_n g_n p_{nc}`, the neighbours' probabilities gathered again.
    """

    @staticmethod
    def forward(ctx, centre, log_probs, neighbours, counts):
        out = centre.new_zeros(neighbours.shape)
        for rows, plane in _planes(log_probs, counts):
            for c in range(log_probs.shape[1]):
                values = plane[c].take(neighbours[rows])
                out[rows].addcmul_(values.exp(), values.sub_(centre[rows, c : c + 1]))
        ctx.save_for_backward(centre, log_probs, neighbours)
        ctx.counts = counts
        return out

    @staticmethod
    def backward(ctx, grad):
        centre, log_probs, neighbours = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the plain gather instead
            item = torch.repeat_interleave(torch.arange(len(ctx.counts), device=grad.device), torch.tensor(ctx.counts))
            around = log_probs.flatten(2)[item.unsqueeze(1), :, neighbours]  # (M, K, C), constants
            dense = (around.exp() * (around - centre.unsqueeze(1))).sum(-1)
            return torch.autograd.grad(dense, centre, grad, create_graph=True)[0], None, None, None
        grad_centre = grad.new_empty(log_probs.shape[1], grad.shape[0])  # class-major rows, transposed at the end
        for rows, plane in _planes(log_probs, ctx.counts):
            for c in range(log_probs.shape[1]):
                probs = plane[c].take(neighbours[rows]).exp_()
                torch.linalg.vecdot(grad[rows], probs, out=grad_centre[c, rows]).neg_()
        return grad_centre.t(), None, None, None


def _planes(log_probs: torch.Tensor, counts: list[int]):
    """``(rows of item b, its (C, N) log-probabilities)`` for each item with rows."""
    start = 0
    for item, count in enumerate(counts):
        if count:
            yield slice(start, start + count), log_probs[item].view(log_probs.shape[1], -1)
        start += count
