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
def forward_divergences(log_probs: torch.Tensor, probs: torch.Tensor | None = None) -> list[torch.Tensor]:
    r""":math:`\mathrm{KL}(p_x \| p_{x + e_a}) = \sum_c p_{xc} (\log p_{xc} - \log p_{x + e_a, c})` for each axis a,
    ``(B, *spatial)`` with that axis one shorter, from log-probabilities ``(B, C, *spatial)``; computed as the
    voxel's negentropy :math:`\sum_c p_{xc} \log p_{xc}` minus :math:`\sum_c p_{xc} \log p_{x + e_a, c}` (one pass per
    class and axis instead of a subtraction and a product). ``probs``: ``log_probs.exp()`` where the caller has it."""
    batch, classes, *spatial = log_probs.shape
    out = []
    for axis, size in enumerate(spatial):
        shape = [batch, *spatial]
        shape[1 + axis] = size - 1
        out.append(log_probs.new_zeros(shape))
    negentropy = log_probs.new_zeros(batch, *spatial)
    for c in range(classes):
        plane = log_probs[:, c]
        plane_probs = plane.exp() if probs is None else probs[:, c]
        negentropy.addcmul_(plane_probs, plane)
        for axis, size in enumerate(spatial):
            ahead = plane.narrow(1 + axis, 1, size - 1)
            out[axis].addcmul_(plane_probs.narrow(1 + axis, 0, size - 1), ahead, value=-1)
    for axis, size in enumerate(spatial):
        out[axis].add_(negentropy.narrow(1 + axis, 0, size - 1))
    return out


class NeighbourDivergence(torch.autograd.Function):
    r""":math:`\mathrm{KL}(p_n \| p_x) = \sum_c p_{nc} (\log p_{nc} - \log p_{xc})` of M centres x, K neighbours n each.

    ``forward(centre, log_probs, probs, neighbours, counts)``: ``centre`` ``(M, C)`` log-probabilities of the centres
    (the gradient flows to them), ``log_probs`` ``(B, C, *spatial)`` contiguous, detached (the neighbours are
    constants), ``probs`` its ``exp()``, contiguous (made once by the caller, kept for the backward),
    ``neighbours`` ``(M, K)`` voxel indices of the neighbours within their item (flat over ``spatial``), the rows
    sorted by item with ``counts[b]`` rows for item b. Returns ``(M, K)``, computed as
    :math:`\sum_c p_{nc} \log p_{nc} - \sum_c p_{nc} \log p_{xc}` (the first sum once per voxel, exp once per voxel,
    not per pair; ``index_select`` gathers, faster than ``take`` on CPU). Backward:
    :math:`\partial / \partial \log p_{xc} = -\sum_n g_n p_{nc}`, the neighbours' probabilities gathered again.
    """

    @staticmethod
    def forward(ctx, centre, log_probs, all_probs, neighbours, counts):
        out = centre.new_empty(neighbours.shape)
        for (rows, plane), (_, probs) in zip(_planes(log_probs, counts), _planes(all_probs, counts), strict=True):
            negentropy = torch.zeros_like(plane[0])
            for c in range(log_probs.shape[1]):
                negentropy.addcmul_(probs[c], plane[c])
            index = neighbours[rows].flatten()  # index_select: faster than take on CPU, same values
            block = out[rows]
            torch.index_select(negentropy, 0, index, out=block.view(-1))
            for c in range(log_probs.shape[1]):
                block.addcmul_(probs[c].index_select(0, index).view_as(block), centre[rows, c : c + 1], value=-1)
        ctx.save_for_backward(centre, log_probs, all_probs, neighbours)
        ctx.counts = counts
        return out

    @staticmethod
    def backward(ctx, grad):
        centre, log_probs, all_probs, neighbours = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the plain gather instead
            item = torch.repeat_interleave(torch.arange(len(ctx.counts), device=grad.device), torch.tensor(ctx.counts))
            around = log_probs.flatten(2)[item.unsqueeze(1), :, neighbours]  # (M, K, C), constants
            dense = (around.exp() * (around - centre.unsqueeze(1))).sum(-1)
            return torch.autograd.grad(dense, centre, grad, create_graph=True)[0], None, None, None, None
        grad_centre = grad.new_empty(log_probs.shape[1], grad.shape[0])  # class-major rows, transposed at the end
        for rows, probs in _planes(all_probs, ctx.counts):
            index = neighbours[rows].flatten()
            for c in range(log_probs.shape[1]):
                around = probs[c].index_select(0, index).view(grad[rows].shape)
                torch.linalg.vecdot(grad[rows], around, out=grad_centre[c, rows]).neg_()
        return grad_centre.t(), None, None, None, None


def _planes(log_probs: torch.Tensor, counts: list[int]):
    """``(rows of item b, its (C, N) log-probabilities)`` for each item with rows."""
    start = 0
    for item, count in enumerate(counts):
        if count:
            yield slice(start, start + count), log_probs[item].view(log_probs.shape[1], -1)
        start += count
