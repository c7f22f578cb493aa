"""Squared-error sums of a softmax against a label map, in one chunked pass without a one-hot target.

The sensitivity-specificity and Boundary DoU losses need, per item and class, sums of squared probabilities split by
the label: :class:`_SoftmaxLabelSquares` takes them from the logits and a ``(B, *spatial)`` label map (gathers and
``scatter_add`` by label, accumulated in :func:`~medseg.losses._prepare.accumulation_dtype`), and its backward goes
through the softmax Jacobian in closed form from the saved probabilities, as
:class:`~medseg.losses._prepare._SoftmaxLabelOverlap` does for TP and Σp.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._prepare import Prepared, accumulation_dtype, chunk_voxels, dense_softmax_onehot, through_softmax


class LabelSquares(NamedTuple):
    r"""Per item and class ``(B, C)``, of :math:`p = \mathrm{softmax}(x)`, labels :math:`l` and mask :math:`m`."""

    #: :math:`\sum_{i: l_i = c} m_i p_{ic}`
    tp: torch.Tensor
    #: :math:`\sum_{i: l_i \ne c} m_i p_{ic}^2` (summed without the label's own square: no cancellation)
    neg_sq: torch.Tensor
    #: :math:`\sum_{i: l_i = c} m_i (1 - p_{ic})^2`
    miss: torch.Tensor
    #: :math:`\sum_{i: l_i = c} m_i` (no gradient)
    count: torch.Tensor


def softmax_label_squares(prep: Prepared) -> LabelSquares:
    """:class:`LabelSquares` of all C classes from ``prep``'s logits and label map (softmax, hard labels)."""
    return LabelSquares(*_SoftmaxLabelSquares.apply(prep._full_logits, prep.labels, prep.mask))


def label_squares_path(prep: Prepared) -> bool:
    """The sums can come from the label map: softmax over exclusive hard labels, outside a shared block (a block
    keeps its one softmax, which the general path reads)."""
    return prep.activation == "softmax" and prep.labels is not None and not prep.shared


class _SoftmaxLabelSquares(torch.autograd.Function):
    r""":class:`LabelSquares` of the logits ``(B, C, *spatial)``, labels ``(B, *spatial)`` and mask
    ``(B, 1, *spatial)`` or ``None``, chunk by chunk; saves :math:`p`.

    Backward, with :math:`\bar t, \bar n, \bar e` the gradients of TP, neg_sq and miss:
    :math:`\partial L / \partial p_{ic} = m_i a_{ic}` with :math:`a_{ic} = 2 \bar n_c p_{ic}` off the label and
    :math:`a_{il} = \bar t_l - 2 \bar e_l (1 - p_{il})` at it (:math:`l = l_i`), so that
    :math:`\partial L / \partial x_{ic} = m_i p_{ic}(a_{ic} - \sum_k p_{ik} a_{ik})`, chunk by chunk. Under
    ``create_graph`` the same formula in tracked ops on :math:`p` recomputed from the logits, differentiated by
    autograd.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        with torch.autocast(logits.device.type, enabled=False):
            b, c = logits.shape[:2]
            x = logits.reshape(b, c, -1)
            lab = labels.reshape(b, -1)
            m = None if mask is None else mask.reshape(b, 1, -1).to(x.dtype)
            probs = torch.empty_like(x, memory_format=torch.contiguous_format)
            dtype = accumulation_dtype(x.device)
            tp, neg_sq, miss, count = (torch.zeros(b, c, dtype=dtype, device=x.device) for _ in range(4))
            step = chunk_voxels(x)
            for start in range(0, x.shape[2], step):
                part = slice(start, start + step)
                index = lab[:, None, part]
                mk = None if m is None else m[:, :, part]
                p = probs[:, :, part].copy_(torch.softmax(x[:, :, part], 1))
                at_label = p.gather(1, index)[:, 0]  # (B, n): each voxel's own class probability
                squares = p.square()
                squares.scatter_(1, index, 0.0)  # the negatives only
                if mk is not None:
                    squares.mul_(mk)
                neg_sq += squares.sum(2)
                weight = None if mk is None else mk[:, 0].to(dtype)
                at_label = at_label.to(dtype)
                for total, value in (
                    (tp, at_label),
                    (miss, torch.rsub(at_label, 1.0).square_()),
                ):
                    total.scatter_add_(1, index[:, 0], value if weight is None else value * weight)
                count.scatter_add_(1, index[:, 0], torch.ones_like(at_label) if weight is None else weight)
        ctx.save_for_backward(probs, lab, m, logits)
        ctx.mark_non_differentiable(count)
        return tuple(total.to(x.dtype) for total in (tp, neg_sq, miss, count))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor, None, None]:
        probs, lab, m, logits = ctx.saved_tensors
        b, c = probs.shape[:2]
        grad_tp, grad_neg, grad_miss = (
            torch.zeros(b, c, dtype=probs.dtype, device=probs.device) if g is None else g.to(probs.dtype)
            for g in grads[:3]
        )
        if torch.is_grad_enabled():  # create_graph: the closed form in tracked ops, differentiated by autograd
            return _tracked_grad(logits, lab, m, grad_tp, grad_neg, grad_miss), None, None
        with torch.autocast(probs.device.type, enabled=False):
            grad = torch.empty_like(probs)
            w, miss_weight = (2.0 * grad_neg).unsqueeze(2), -2.0 * grad_miss
            step = chunk_voxels(probs)
            for start in range(0, probs.shape[2], step):
                part = slice(start, start + step)
                index = lab[:, None, part]
                p, out = probs[:, :, part], grad[:, :, part]
                at_label = p.gather(1, index)  # (B, 1, n)
                # a_c = w_c p_c off the label, a_l = t̄_l − 2 ē_l (1 − p_l) at it (no w_l p_l to cancel)
                own = torch.rsub(at_label, 1.0).mul_(_at(miss_weight, index))
                if grads[0] is not None:  # TP is read (Boundary DoU; not the sensitivity-specificity loss)
                    own.add_(_at(grad_tp, index))
                a = torch.mul(p, w, out=out).scatter_(1, index, own)
                shift = (a * p).sum(1, keepdim=True)  # Σ_k p_k a_k
                a.sub_(shift).mul_(p)  # p (a − Σ p a)
                if m is not None:
                    out.mul_(m[:, :, part])
        return grad.reshape(logits.shape), None, None


def _at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values`` ``(B, C)`` at each voxel's label ``index`` ``(B, 1, n)``: ``(B, 1, n)``."""
    return values.gather(1, index[:, 0]).unsqueeze(1)


def _tracked_grad(
    logits: torch.Tensor,
    lab: torch.Tensor,
    m: torch.Tensor | None,
    grad_tp: torch.Tensor,
    grad_neg: torch.Tensor,
    grad_miss: torch.Tensor,
) -> torch.Tensor:
    """:class:`_SoftmaxLabelSquares`' gradient in tracked ops (dense, for higher derivatives)."""
    p, onehot = dense_softmax_onehot(logits, lab)
    a = 2.0 * grad_neg.unsqueeze(2) * p * (1 - onehot)
    a = a + onehot * (grad_tp.unsqueeze(2) - 2.0 * grad_miss.unsqueeze(2) * (1 - p))
    if m is not None:
        a = a * m
    return through_softmax(p, a, onehot).reshape(logits.shape)
