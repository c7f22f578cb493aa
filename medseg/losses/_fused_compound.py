"""One chunked pass for the softmax compounds whose pixel term reads each voxel's own label (``exp_log``,
``unified_focal``): the overlap sums of their region term and the label's log-probability of their pixel term.

The dense path took a C-wide log-softmax, a C-wide ``exp`` of it for the probabilities, kept both for backward and
ran autograd through each; here one pass per cache-sized chunk takes the log-softmax, its ``exp`` (saved for
backward), the sums by label and the gather, and the backward is one closed form through the softmax Jacobian.
"""

from __future__ import annotations

from typing import Any

import torch

from ._prepare import Prepared, accumulation_dtype, chunk_voxels, dense_softmax_onehot, through_softmax


def owns_its_softmax(prep: Prepared) -> bool:
    """No other term of the :func:`~medseg.losses._prepare.shared_preparation` block has taken the softmax: the fused
    pass may take its own (else the caller reads the block's one softmax)."""
    shared = prep._shared
    return shared is None or ("softmax" not in shared and "log_softmax" not in shared)


def softmax_overlap_label_log_prob(
    prep: Prepared,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""TP, Σp and Σg per item and class, all C classes ``(B, C)``, and :math:`\log p_{l_i}` of each voxel's label
    ``(B, 1, *spatial)``, of the softmax of ``prep``'s logits and its label map, in one chunked pass
    (:class:`_SoftmaxOverlapLabelLogProb`). Ignored voxels are left out of the sums; their log-probability is that
    of their label 0, for the caller to mask. Σg comes in :func:`~medseg.losses._prepare.accumulation_dtype` (exact
    counts). In a :func:`~medseg.losses._prepare.shared_preparation` block the sums are left for a later Dice-type
    term (no second softmax)."""
    tp, sum_p, sum_g, log_p = _SoftmaxOverlapLabelLogProb.apply(prep._full_logits, prep.labels, prep.mask)
    if prep._shared is not None:
        prep._shared[("label_sums", id(prep.labels), id(prep.mask))] = (tp, sum_p, sum_g.to(tp.dtype))
    return tp, sum_p, sum_g, log_p.reshape(prep.labels.unsqueeze(1).shape)


class _SoftmaxOverlapLabelLogProb(torch.autograd.Function):
    r"""Of :math:`p = \mathrm{softmax}(x)`, labels :math:`l` and a mask :math:`m`, per item and class
    :math:`TP_c = \sum_{i: l_i = c} m_i p_{ic}`, :math:`\sum_i m_i p_{ic}`, :math:`\sum_{i: l_i = c} m_i`, and per
    voxel :math:`\log p_{i l_i}`, chunk by chunk; saves :math:`p` and :math:`p_{il_i}` (its ``exp``: no gather).

    Backward, with :math:`\bar t, \bar s` the gradients of TP and Σp and :math:`v_i` that of :math:`\log p_{il_i}`:
    :math:`a_{ic} = m_i(\bar s_c + \bar t_c [l_i = c])` gives
    :math:`\partial L / \partial x_{ic} = p_{ic}(a_{ic} - \sum_k p_{ik} a_{ik} - v_i) + v_i [l_i = c]`
    (:math:`\sum_k p_{ik} a_{ik} = m_i(p_i \cdot \bar s + p_{il_i} \bar t_{l_i})`). Under ``create_graph`` the same
    formula in tracked ops on :math:`p` recomputed from the logits, differentiated by autograd.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(logits.device.type, enabled=False):
            b, c = logits.shape[:2]
            x = logits.reshape(b, c, -1)
            lab = labels.reshape(b, -1)
            m = None if mask is None else mask.reshape(b, 1, -1).to(x.dtype)
            probs = torch.empty_like(x, memory_format=torch.contiguous_format)
            label_log_p = torch.empty(b, 1, x.shape[2], dtype=x.dtype, device=x.device)
            label_p = torch.empty_like(label_log_p)  # p of each voxel's label, the exp of its log (no C-wide gather)
            dtype = accumulation_dtype(x.device)
            tp, sum_p, sum_g = (torch.zeros(b, c, dtype=dtype, device=x.device) for _ in range(3))
            step = chunk_voxels(x)
            for start in range(0, x.shape[2], step):
                part = slice(start, start + step)
                index = lab[:, None, part]
                mk = None if m is None else m[:, :, part]
                log_p = torch.log_softmax(x[:, :, part], 1)
                p = torch.exp(log_p, out=probs[:, :, part])
                log_at_label = torch.gather(log_p, 1, index, out=label_log_p[:, :, part])
                sum_p += (p if mk is None else p * mk).sum(2)
                at_label = torch.exp(log_at_label, out=label_p[:, :, part])[:, 0]
                count = torch.ones_like(at_label) if mk is None else mk[:, 0]
                if mk is not None:
                    at_label = at_label * count
                tp.scatter_add_(1, index[:, 0], at_label.to(dtype))
                sum_g.scatter_add_(1, index[:, 0], count.to(dtype))
        ctx.mark_non_differentiable(sum_g)
        ctx.save_for_backward(probs, label_p, lab, m, logits)
        return tp.to(x.dtype), sum_p.to(x.dtype), sum_g, label_log_p

    @staticmethod
    def backward(
        ctx: Any, grad_tp: torch.Tensor | None, grad_sum_p: torch.Tensor | None, _: Any, grad_log_p: torch.Tensor | None
    ) -> tuple[torch.Tensor, None, None]:
        probs, label_p, lab, m, logits = ctx.saved_tensors
        b, c, n = probs.shape

        def dense(g: torch.Tensor | None, *shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=probs.dtype, device=probs.device) if g is None else g.to(probs.dtype)

        grad_tp, grad_sum_p, grad_log_p = dense(grad_tp, b, c), dense(grad_sum_p, b, c), dense(grad_log_p, b, 1, n)
        if torch.is_grad_enabled():  # create_graph: the closed form in tracked ops, for higher derivatives
            return _tracked_grad(logits, lab, m, grad_tp, grad_sum_p, grad_log_p), None, None
        with torch.autocast(probs.device.type, enabled=False):
            grad = torch.empty_like(probs)
            s = grad_sum_p.unsqueeze(2)
            step = chunk_voxels(probs)
            for start in range(0, n, step):
                part = slice(start, start + step)
                index = lab[:, None, part]
                p, out, v = probs[:, :, part], grad[:, :, part], grad_log_p[:, :, part]
                t = label_p[:, :, part] * grad_tp.gather(1, index[:, 0]).unsqueeze(1)  # p_l t̄_l
                shift = torch.matmul(grad_sum_p.unsqueeze(1), p).add_(t)  # Σ_k p_k a_k / m
                if m is None:
                    torch.mul(p, torch.sub(s, shift.add_(v)), out=out)  # p (s̄ − Σ p a − v)
                else:
                    mk = m[:, :, part]
                    t = t * mk
                    torch.mul(p, torch.mul(s, mk).sub_(shift.mul_(mk).add_(v)), out=out)
                out.scatter_add_(1, index, t.add_(v))
        return grad.reshape(logits.shape), None, None


def _tracked_grad(
    logits: torch.Tensor,
    lab: torch.Tensor,
    m: torch.Tensor | None,
    grad_tp: torch.Tensor,
    grad_sum_p: torch.Tensor,
    grad_log_p: torch.Tensor,
) -> torch.Tensor:
    """:class:`_SoftmaxOverlapLabelLogProb`'s gradient in tracked ops (dense), for higher derivatives."""
    p, onehot = dense_softmax_onehot(logits, lab)
    a = grad_sum_p.unsqueeze(2) + grad_tp.unsqueeze(2) * onehot
    if m is not None:
        a = a * m
    return through_softmax(p, a, onehot, grad_log_p).reshape(logits.shape)
