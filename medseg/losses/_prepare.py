"""Input preparation shared by every loss: validation, activation, one-hot, ignore mask, class selection.

MONAI repeats this preamble in each loss; medseg does it once, here. A loss calls
:meth:`SegmentationLoss.prepare` and gets a :class:`Prepared` bundle of float32 tensors.

One rule for a single-channel input ``(B, 1, *spatial)``, in every loss: it is a binary problem and the channel
is the foreground. ``sigmoid=True`` applies the sigmoid (as MONAI). ``softmax=True`` applies the sigmoid too:
the softmax over the two logits ``(0, x)`` gives the foreground exactly σ(x), so this is the
two-class softmax with the background logit fixed at 0 (MONAI warns and skips the softmax, reading logits as
probabilities; medseg warns and computes the binary loss). Without an activation the input must already be the
foreground probability: values outside [0, 1] raise a ValueError naming the loss and the fix, never a number
from logits read as probabilities. ``other_act`` is the user's own choice and is applied as given.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cached_property
from typing import Any

import torch
from torch import nn

from .registry import list_losses, registered_name

REDUCTIONS = ("mean", "sum", "none")


#: per (input, target) pair, the work that losses called inside :func:`shared_preparation` share; ``None`` outside
_SHARED: ContextVar[dict[Any, Any] | None] = ContextVar("medseg_shared_prepare", default=None)


@contextmanager
def shared_preparation(log_softmax_first: bool = False) -> Iterator[None]:
    """Within this block every loss prepares a given ``(input, target)`` pair once: the label checks, the ignore
    mask, the softmax, the sigmoid and the one-hot target are computed by the first term that reads them and reused
    by the others. Once a term has taken the log-softmax, the probabilities are its ``exp`` (one softmax for all;
    a built-in compound runs its log-softmax term first; ``log_softmax_first`` takes the probabilities as the
    ``exp`` of the log-softmax from the start, for terms in any order). The compounds and
    :class:`~medseg.losses.CompoundLoss` run their terms in one. Nested blocks share the outer one's work; the cache
    holds the tensors it is keyed on, so it ends with the block."""
    token = _SHARED.set({"log_softmax_first": log_softmax_first}) if _SHARED.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _SHARED.reset(token)


def _shared_store(input: torch.Tensor, target: torch.Tensor) -> dict[Any, Any] | None:
    scope = _SHARED.get()
    if scope is None:
        return None
    # the store keeps the two tensors alive, so their ids cannot be reused while the block lasts
    store = {"tensors": (input, target), "log_softmax_first": scope["log_softmax_first"]}
    return scope.setdefault((id(input), id(target)), store)


def _memo(store: dict[Any, Any] | None, key: Any, compute: Callable[[], Any]) -> Any:
    if store is None:
        return compute()
    if key not in store:
        store[key] = compute()
    return store[key]


#: device types without float64 tensors
_NO_FLOAT64 = frozenset({"mps"})


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the label-map sums: float64 (exact counts, no float32 drift over millions of voxels), float32 on
    a device without float64 (Apple MPS)."""
    return torch.float32 if device.type in _NO_FLOAT64 else torch.float64


class ShapeMismatchError(ValueError, AssertionError):
    """Input and target shapes that do not fit: a ``ValueError`` (medseg's rule for bad input) that is also the
    ``AssertionError`` MONAI's losses raise, so code catching either keeps working."""


class Prepared:
    """What a loss needs, float32 (float64 kept) and with the classes kept by ``include_background``.

    Computed lazily and cached, so a loss pays only for what it reads.

    Attributes:
        logits: the raw input ``(B, C', *spatial)`` (for log-softmax/log-sigmoid terms).
        probs: activated probabilities ``(B, C', *spatial)``.
        log_probs: log of ``probs``, from the logits for sigmoid/softmax (numerically stable).
        target: one-hot (or binary) target ``(B, C', *spatial)``, zero at ignored voxels (assignable).
        labels: integer class map ``(B, *spatial)`` over *all* C classes (ignored voxels set to 0), or
            ``None`` when the target was given one-hot for a sigmoid (multi-label) problem.
        mask: ``(B, 1, *spatial)`` float, 1 where a voxel takes part, or ``None`` when nothing is ignored.
        classes: indices of the kept classes in the original C.
        activation: ``"softmax"``, ``"sigmoid"``, ``"other"`` or ``"none"`` (one channel: never ``"softmax"``).
        loss_name: how error messages name the loss.
    """

    def __init__(
        self,
        full_logits: torch.Tensor,
        labels: torch.Tensor | None,
        onehot: torch.Tensor | None,
        mask: torch.Tensor | None,
        classes: list[int],
        activation: str,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        loss_name: str = "the loss",
        shared: dict[Any, Any] | None = None,
    ) -> None:
        self._full_logits = full_logits
        self._shared = shared  # work shared with the other losses of a :func:`shared_preparation` block
        self._onehot = onehot  # full-C one-hot target when given one-hot, else built from labels on demand
        self._other_act = other_act
        self.labels = labels
        self.mask = mask
        self.classes = classes
        self.activation = activation
        self.loss_name = loss_name
        self._all_classes = len(classes) == full_logits.shape[1]

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._all_classes else x[:, self.classes[0] :]

    @property
    def shared(self) -> bool:
        """Prepared inside a :func:`shared_preparation` block: terms of one compound share the activations."""
        return self._shared is not None

    def _full_log_softmax(self) -> torch.Tensor:
        return _memo(self._shared, "log_softmax", lambda: torch.log_softmax(self._full_logits, 1))

    @property
    def logits(self) -> torch.Tensor:
        return self._keep(self._full_logits)

    @property
    def binary(self) -> bool:
        """Each channel is its own binary problem (sigmoid, or a single channel), not one of C exclusive classes."""
        return self.activation == "sigmoid" or self._full_logits.shape[1] == 1

    @cached_property
    def probs(self) -> torch.Tensor:
        return self._keep(self.all_probs)

    @cached_property
    def all_probs(self) -> torch.Tensor:
        """``probs`` of all C classes, before ``include_background=False`` drops class 0."""
        x = self._full_logits
        if self.activation == "softmax":
            shared = self._shared
            if shared is not None and (shared["log_softmax_first"] or "log_softmax" in shared):  # one softmax: exp
                return _memo(shared, "softmax", lambda: self._full_log_softmax().exp())
            return _memo(self._shared, "softmax", lambda: torch.softmax(x, 1))
        if self.activation == "sigmoid":
            return _memo(self._shared, "sigmoid", lambda: torch.sigmoid(x))
        if self.activation == "other":
            return self._other_act(x).to(x.dtype)
        if x.shape[1] == 1:
            _check_probabilities(x, self.loss_name)
        return x

    @cached_property
    def log_probs(self) -> torch.Tensor:
        if self.activation == "softmax":
            return self._keep(self._full_log_softmax())
        if self.activation == "sigmoid":
            return self._keep(_memo(self._shared, "logsigmoid", lambda: nn.functional.logsigmoid(self._full_logits)))
        return torch.log(self.probs.clamp_min(1e-12))

    @cached_property
    def log_one_minus_probs(self) -> torch.Tensor:
        """log(1 − p), the negatives' term of a binary cross-entropy; from the logits for the sigmoid (stable)."""
        if self.activation == "sigmoid":
            full = _memo(self._shared, "logsigmoid_neg", lambda: nn.functional.logsigmoid(-self._full_logits))
            return self._keep(full)
        return torch.log((1.0 - self.probs).clamp_min(1e-12))

    @cached_property
    def target(self) -> torch.Tensor:
        """The target of the kept classes (shared by the terms of a block: assign, never modify in place)."""
        # labels and mask are themselves shared per ignore_index: their ids tell the targets of a block apart
        key = ("target", self._full_logits.dtype, tuple(self.classes), id(self.labels), id(self.mask), id(self._onehot))
        return _memo(self._shared, key, self._build_target)

    def _build_target(self) -> torch.Tensor:
        dtype = self._full_logits.dtype
        if self._onehot is not None:
            onehot = self._keep(self._onehot.to(dtype))
            return onehot if self.mask is None else onehot * self.mask.to(dtype)
        if self._full_logits.shape[1] == 1:
            onehot = self.labels.unsqueeze(1).to(dtype)
            return onehot if self.mask is None else onehot * self.mask.to(dtype)
        if self.mask is None and self._all_classes:
            return torch.zeros_like(self._full_logits).scatter_(1, self.labels.unsqueeze(1), 1.0)
        labels = self.labels if self.mask is None else torch.where(self.mask[:, 0] > 0, self.labels, -1)
        kept = torch.tensor(self.classes, device=labels.device).view(1, -1, *([1] * (labels.ndim - 1)))
        return (labels.unsqueeze(1) == kept).to(dtype)

    def label_log_prob(self) -> torch.Tensor:
        """log p of each voxel's label ``(B, 1, *spatial)`` under the softmax: a gather, no one-hot target."""
        return self._full_log_softmax().gather(1, self.labels.unsqueeze(1))

    def label_counts(self) -> torch.Tensor:
        """Voxels per class over the batch, all C classes ``(C,)``, ignored voxels left out (counted in
        :func:`accumulation_dtype`)."""
        dtype = accumulation_dtype(self.labels.device)
        weights = torch.ones(self.labels.numel(), dtype=dtype, device=self.labels.device)
        if self.mask is not None:
            weights = self.mask.flatten().to(dtype)
        counts = torch.zeros(self._full_logits.shape[1], dtype=dtype, device=self.labels.device)
        return counts.scatter_add_(0, self.labels.flatten(), weights).to(self._full_logits.dtype)

    @property
    def spatial_dims(self) -> list[int]:
        return list(range(2, self._full_logits.ndim))

    def masked(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with ignored voxels set to zero."""
        return x if self.mask is None else x * self.mask

    def voxel_count(self) -> torch.Tensor:
        """Number of voxels that take part, per batch item ``(B,)``."""
        if self.mask is None:
            n = self._full_logits[0, 0].numel()
            return torch.full((self._full_logits.shape[0],), float(n), device=self._full_logits.device)
        return self.mask.flatten(1).sum(1)


def overlap_stats(
    prep: Prepared, batch: bool = False, squared: bool = False, soft_label: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft TP, FP and FN per class from one pass over the probabilities.

    TP = Σ p g, FP = Σ p − TP, FN = Σ g − TP (with p², g² for ``squared``: the V-Net form), summed over the
    spatial dims (and the batch when ``batch``). ``soft_label`` (without ``squared``) uses the form that stays
    right for soft targets, TP = (Σ|p| + Σ|g| − Σ|p − g|) / 2 (Wang & Blaschko, Dice semimetric losses, MICCAI 2023;
    MONAI's ``soft_label``): equal to Σ p g for 0/1 targets, and 0 loss when p = g for any target.
    Returns tensors of shape ``(B, C')`` or ``(C',)``. Softmax with hard labels (and neither ``squared`` nor
    ``soft_label``) takes them from the label map, without a one-hot target (:class:`_SoftmaxLabelOverlap`).
    """
    if _label_softmax_path(prep, squared, soft_label):
        return _label_softmax_stats(prep, batch)
    p = prep.masked(prep.probs)
    g = prep.target
    dims = prep.spatial_dims if not batch else [0, *prep.spatial_dims]
    if soft_label and not squared:
        sum_p, sum_g = p.abs().sum(dims), g.abs().sum(dims)
        tp = (sum_p + sum_g - (p - g).abs().sum(dims)) / 2
        return tp, sum_p - tp, sum_g - tp
    tp = (p * g).sum(dims)
    if squared:
        sum_p = (p * p).sum(dims)
        sum_g = (g * g).sum(dims)
    else:
        sum_p = p.sum(dims)
        sum_g = g.sum(dims)
    return tp, sum_p - tp, sum_g - tp


def _label_softmax_path(prep: Prepared, squared: bool, soft_label: bool) -> bool:
    """The statistics can come from the label map: softmax over exclusive hard labels, plain (not squared) sums."""
    return prep.activation == "softmax" and prep.labels is not None and not squared and not soft_label


class _ProbLabelOverlap(torch.autograd.Function):
    r""":class:`_SoftmaxLabelOverlap` on probabilities already taken (a shared softmax): the same sums, and the
    gradient :math:`\partial L / \partial p_{ic} = m_i(\bar s_c + \bar t_c [l_i = c])` in one pass (autograd
    carries it through the softmax)."""

    @staticmethod
    def forward(
        ctx: Any, probs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(probs.device.type, enabled=False):
            b, c = probs.shape[:2]
            p = probs.reshape(b, c, -1)
            lab = labels.reshape(b, -1)
            tp, sum_p, sum_g = _label_sums(p, lab, mask)
        ctx.mark_non_differentiable(sum_g)
        ctx.save_for_backward(lab, mask)
        ctx.probs_shape = probs.shape
        return tp, sum_p, sum_g

    @staticmethod
    def backward(
        ctx: Any, grad_tp: torch.Tensor | None, grad_sum_p: torch.Tensor | None, _: torch.Tensor | None
    ) -> tuple[torch.Tensor, None, None]:
        lab, mask = ctx.saved_tensors
        b, c, n = ctx.probs_shape[0], ctx.probs_shape[1], lab.shape[1]
        reference = grad_tp if grad_tp is not None else grad_sum_p
        grad_tp = torch.zeros_like(reference) if grad_tp is None else grad_tp
        grad_sum_p = torch.zeros_like(reference) if grad_sum_p is None else grad_sum_p
        with torch.autocast(reference.device.type, enabled=False):
            grad = grad_sum_p.unsqueeze(2).expand(b, c, n)
            grad = grad.scatter_add(1, lab.unsqueeze(1), grad_tp.gather(1, lab).unsqueeze(1))
            if mask is not None:
                grad = grad * mask.reshape(b, 1, -1).to(grad.dtype)
        return grad.reshape(ctx.probs_shape), None, None


def _label_sums(
    p: torch.Tensor, lab: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TP, Σp and Σg per item and class of probabilities ``(B, C, N)`` and labels ``(B, N)`` (TP and Σg summed in
    :func:`accumulation_dtype`)."""
    b, c = p.shape[:2]
    dtype = accumulation_dtype(p.device)
    p_lab = p.gather(1, lab.unsqueeze(1)).squeeze(1)  # (B, N): the probability of each voxel's label
    if mask is None:
        sum_p = p.sum(2)
        count = torch.ones_like(p_lab, dtype=dtype)
    else:
        m = mask.reshape(b, -1).to(p.dtype)
        sum_p = torch.bmm(p, m.unsqueeze(2)).squeeze(2)
        p_lab = p_lab * m
        count = m.to(dtype)
    zeros = torch.zeros(b, c, dtype=dtype, device=p.device)
    tp = zeros.scatter_add(1, lab, p_lab.to(dtype)).to(p.dtype)
    return tp, sum_p, zeros.scatter_add(1, lab, count).to(p.dtype)


#: elements of ``(B, C, N)`` per chunk of the fused CPU passes (:class:`_SoftmaxLabelSums`,
#: ``pixel._SigmoidFocalSum``): their temporaries stay in a core's cache
_CHUNK = 1 << 18


def chunk_voxels(x: torch.Tensor, elements: int | None = None) -> int:
    """Voxels per chunk of a fused pass over ``x`` ``(B, C, N)``: about ``elements`` (default ``_CHUNK``) elements
    on the CPU (cache-sized), all N on an accelerator (one launch per op instead of one per chunk)."""
    b, c, n = x.shape
    if x.device.type != "cpu":
        return max(n, 1)
    return max(1, (_CHUNK if elements is None else elements) // (b * c))


def softmax_label_sums(prep: Prepared, with_logs: bool = True) -> tuple[torch.Tensor, ...]:
    """TP, Σp, Σg, Σ log p (positives) and Σ log(1 − p) (negatives) per item and class, all C classes ``(B, C)``,
    of the softmax and the label map in one chunked pass (:class:`_SoftmaxLabelSums`; without ``with_logs`` the
    last two are zeros, not computed); in a :func:`shared_preparation` block the Dice-type terms take TP, Σp and Σg
    from here (no second softmax)."""
    sums = _SoftmaxLabelSums.apply(prep._full_logits, prep.labels, prep.mask, with_logs)
    if prep._shared is not None:
        prep._shared[("label_sums", id(prep.labels), id(prep.mask))] = sums
    return sums


class _SoftmaxLabelSums(torch.autograd.Function):
    r"""Per item and class, of :math:`p = \mathrm{softmax}(x)`, a label map :math:`l` and a mask :math:`m`:
    :math:`TP_c = \sum_{i: l_i = c} m_i p_{ic}`, :math:`\sum_i m_i p_{ic}`, :math:`\sum_{i: l_i = c} m_i` and, with
    ``with_logs``, :math:`\sum_{i: l_i = c} m_i \log p_{ic}` and :math:`\sum_{i: l_i \ne c} m_i \log(1 - p_{ic})`
    (``1 - p`` at least the dtype's eps, as ``log1p(-p.clamp(max=1 - eps))``), in cache-sized chunks, without a
    one-hot target; saves :math:`p`.

    Backward, with :math:`\bar t, \bar s, \bar q, \bar n` the gradients of TP, Σp, Σ log p and Σ log(1 − p):
    :math:`a_{ic} = m_i(\bar s_c + \bar t_c [l_i = c] - \bar n_c [l_i \ne c][p_{ic} \le 1 - \epsilon] / (1 - p_{ic}))`
    and :math:`u_i = m_i \bar q_{l_i}` give
    :math:`\partial L / \partial x_{ic} = p_{ic}(a_{ic} - \sum_k p_{ik} a_{ik} - u_i) + u_i [l_i = c]`, chunk by chunk.
    Under ``create_graph`` the same sums are taken again in tracked ops and differentiated by autograd.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None, with_logs: bool
    ) -> tuple[torch.Tensor, ...]:
        outputs = _label_sums_forward(ctx, logits, labels, mask, with_logs)
        ctx.mark_non_differentiable(*(outputs[2:] if not with_logs else outputs[2:3]))
        return outputs

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor, None, None, None]:
        return _label_sums_backward(ctx, grads), None, None, None


class _SoftmaxLabelOverlap(torch.autograd.Function):
    r"""TP, Σp and Σg of :class:`_SoftmaxLabelSums` alone (no logarithms): the statistics of the softmax Dice-type
    losses with hard labels, one chunked pass without a one-hot target, closed-form backward through the softmax
    Jacobian from the saved :math:`p`."""

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tp, sum_p, sum_g = _label_sums_forward(ctx, logits, labels, mask, False)[:3]
        ctx.mark_non_differentiable(sum_g)
        return tp, sum_p, sum_g

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor, None, None]:
        return _label_sums_backward(ctx, (*grads, None, None)), None, None


def _label_sums_forward(
    ctx: Any, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None, with_logs: bool
) -> tuple[torch.Tensor, ...]:
    """:class:`_SoftmaxLabelSums`' forward: the five sums ``(B, C)``, chunk by chunk; saves p."""
    with torch.autocast(logits.device.type, enabled=False):
        b, c = logits.shape[:2]
        x = logits.reshape(b, c, -1)
        lab = labels.reshape(b, -1)
        m = None if mask is None else mask.reshape(b, 1, -1).to(x.dtype)
        probs = torch.empty_like(x, memory_format=torch.contiguous_format)
        dtype = accumulation_dtype(x.device)
        sums = [torch.zeros(b, c, dtype=dtype, device=x.device) for _ in range(5)]
        tp, sum_p, sum_g, pos_log, neg_log = sums
        floor = 1.0 - torch.finfo(x.dtype).eps
        step = chunk_voxels(x)
        for start in range(0, x.shape[2], step):
            part = slice(start, start + step)
            index = lab[:, None, part]
            mk = None if m is None else m[:, :, part]
            out = probs[:, :, part]
            if with_logs:
                log_p = torch.log_softmax(x[:, :, part], 1)
                p = torch.exp(log_p, out=out)
            else:
                p = out.copy_(torch.softmax(x[:, :, part], 1))
            sum_p += (p if mk is None else p * mk).sum(2)
            at_label = p.gather(1, index)[:, 0]
            count = torch.ones_like(at_label) if mk is None else mk[:, 0]
            if mk is not None:
                at_label = at_label * count
            tp.scatter_add_(1, index[:, 0], at_label.to(dtype))
            sum_g.scatter_add_(1, index[:, 0], count.to(dtype))
            if not with_logs:
                continue
            log_at_label = log_p.gather(1, index)[:, 0]
            log_at_label = log_at_label if mk is None else log_at_label * count
            pos_log.scatter_add_(1, index[:, 0], log_at_label.to(dtype))
            log_not_p = torch.log1p(p.clamp(max=floor).neg_())
            log_not_p.scatter_(1, index, 0.0)  # the negatives only
            neg_log += (log_not_p if mk is None else log_not_p.mul_(mk)).sum(2)
    ctx.save_for_backward(probs, lab, m, logits)
    ctx.floor, ctx.with_logs = floor, with_logs
    return tuple(total.to(x.dtype) for total in sums)


def _label_sums_backward(ctx: Any, grads: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    """:class:`_SoftmaxLabelSums`' backward: the gradient of the logits from those of the five sums."""
    probs, lab, m, logits = ctx.saved_tensors
    b, c = probs.shape[:2]
    grad_tp, grad_sum_p, _, grad_pos, grad_neg = (
        torch.zeros(b, c, dtype=probs.dtype, device=probs.device) if g is None else g.to(probs.dtype) for g in grads
    )
    if torch.is_grad_enabled():  # create_graph: the same sums in tracked ops, differentiated by autograd
        return _tracked_label_sums_grad(logits, lab, m, grad_tp, grad_sum_p, grad_pos, grad_neg, ctx.floor)
    with torch.autocast(probs.device.type, enabled=False):
        grad = torch.empty_like(probs)
        step = chunk_voxels(probs)
        for start in range(0, probs.shape[2], step):
            part = slice(start, start + step)
            index = lab[:, None, part]
            mk = None if m is None else m[:, :, part]
            p, out = probs[:, :, part], grad[:, :, part]
            t = p.gather(1, index) * grad_tp.gather(1, index[:, 0]).unsqueeze(1)  # p_l t̄_l
            if not ctx.with_logs:  # a = s̄ + t̄ [l = c]: Σ_k p_k a_k = p · s̄ + p_l t̄_l
                shift = torch.matmul(grad_sum_p.unsqueeze(1), p).add_(t)
                torch.mul(p, torch.sub(grad_sum_p.unsqueeze(2), shift), out=out)
                out.scatter_add_(1, index, t)
                if mk is not None:
                    out.mul_(mk)
                continue
            # a = s̄ + t̄ [l = c] − n̄ [l ≠ c][p ≤ 1 − eps] / (1 − p), times m
            a = torch.div(grad_neg.neg().unsqueeze(2), torch.rsub(p, 1.0)).masked_fill_(p > ctx.floor, 0.0)
            a.scatter_(1, index, grad_tp.unsqueeze(2).expand(b, c, index.shape[2]).gather(1, index))
            a.add_(grad_sum_p.unsqueeze(2))
            u = grad_pos.gather(1, index[:, 0]).unsqueeze(1)
            if mk is not None:
                a.mul_(mk)
                u = u * mk
            weighted = a.mul_(p)  # p a
            shift = weighted.sum(1, keepdim=True).add_(u)
            torch.addcmul(weighted, p, shift, value=-1.0, out=out)  # p (a − Σ p a − u)
            out.scatter_add_(1, index, u)
    return grad.reshape(logits.shape)


def dense_softmax_onehot(logits: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(B, C, N)`` softmax of ``(B, C, *spatial)`` logits and the one-hot of the ``(B, N)`` labels, in tracked
    ops: the start of every fused pass's dense gradient twin (used under ``create_graph``)."""
    b, c = logits.shape[:2]
    p = torch.softmax(logits.reshape(b, c, -1), 1)
    return p, torch.zeros_like(p).scatter_(1, lab.unsqueeze(1), 1.0)


def through_softmax(
    p: torch.Tensor, a: torch.Tensor, onehot: torch.Tensor, u: torch.Tensor | None = None
) -> torch.Tensor:
    r"""The gradient on the logits of :math:`\sum a_{ic} p_{ic} + \sum u_i \log p_{il_i}` (``a`` the gradient on the
    probabilities, ``u`` on each voxel's label log-probability, channels on dim 1):
    :math:`p_{ic}(a_{ic} - \sum_k p_{ik} a_{ik} - u_i) + u_i [l_i = c]`."""
    if u is None:
        return p * (a - (p * a).sum(1, keepdim=True))
    return p * (a - (p * a).sum(1, keepdim=True) - u) + u * onehot


def _tracked_label_sums_grad(
    logits: torch.Tensor,
    lab: torch.Tensor,
    m: torch.Tensor | None,
    grad_tp: torch.Tensor,
    grad_sum_p: torch.Tensor,
    grad_pos: torch.Tensor,
    grad_neg: torch.Tensor,
    floor: float,
) -> torch.Tensor:
    """:class:`_SoftmaxLabelSums`' closed-form gradient in tracked ops on :math:`p` recomputed from the logits (dense,
    for higher derivatives)."""
    p, onehot = dense_softmax_onehot(logits, lab)
    inside = (p <= floor).to(p.dtype) * (1 - onehot)
    a = grad_sum_p.unsqueeze(2) + grad_tp.unsqueeze(2) * onehot
    a = a - grad_neg.unsqueeze(2) * inside / (1 - p.clamp(max=floor))
    u = (grad_pos.unsqueeze(2) * onehot).sum(1, keepdim=True)
    if m is not None:
        a, u = a * m, u * m
    return through_softmax(p, a, onehot, u).reshape(logits.shape)


def _label_softmax_stats(prep: Prepared, batch: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TP, FP, FN of :func:`overlap_stats` from the label map: from the logits (:class:`_SoftmaxLabelOverlap`), or
    in a :func:`shared_preparation` block where another term takes the softmax, from its probabilities
    (:class:`_ProbLabelOverlap`: the block keeps one softmax), or where a term took them with
    :func:`softmax_label_sums`, those."""
    shared = prep._shared
    stats_key = ("label_sums", id(prep.labels), id(prep.mask))
    if shared is not None and stats_key in shared:  # a term of the block took them already (one fused pass)
        tp, sum_p, sum_g = shared[stats_key][:3]
    elif shared is not None and (shared["log_softmax_first"] or "softmax" in shared or "log_softmax" in shared):
        prep.probs  # noqa: B018 -- takes (or reads) the block's one softmax: the exp of its log-softmax
        tp, sum_p, sum_g = _ProbLabelOverlap.apply(shared["softmax"], prep.labels, prep.mask)
    else:
        tp, sum_p, sum_g = _SoftmaxLabelOverlap.apply(prep._full_logits, prep.labels, prep.mask)
    if not prep._all_classes:
        tp, sum_p, sum_g = tp[:, prep.classes[0] :], sum_p[:, prep.classes[0] :], sum_g[:, prep.classes[0] :]
    if batch:
        tp, sum_p, sum_g = tp.sum(0), sum_p.sum(0), sum_g.sum(0)
    return tp, sum_p - tp, sum_g - tp


def reduce(loss: torch.Tensor, reduction: str, spatial_ndim: int | None = None) -> torch.Tensor:
    """Apply ``reduction`` to a ``(B, C)``/``(C,)`` per-class loss.

    With ``reduction="none"`` and ``spatial_ndim`` given, the result is reshaped to
    ``(B, C, 1, ...)`` so that it broadcasts against the input, as MONAI's region losses do.
    """
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if spatial_ndim is not None and loss.ndim == 2:
        return loss.view(*loss.shape, *([1] * spatial_ndim))
    return loss


def describe_loss(loss: nn.Module) -> str:
    """A loss as messages name it: its registry name and class, ``'dice' (DiceLoss)``, or the class alone."""
    name = registered_name(type(loss))
    return type(loss).__name__ if name is None else f"{name!r} ({type(loss).__name__})"


def _check_finite(input: torch.Tensor) -> None:
    # a sum is NaN/inf whenever any element is: one cheap reduction instead of an elementwise mask
    if not torch.isfinite(input.sum(dtype=torch.float32 if input.dtype != torch.float64 else torch.float64)):
        n_nan = int(torch.isnan(input).sum())
        n_inf = int(torch.isinf(input).sum())
        raise ValueError(f"input logits contain {n_nan} NaN and {n_inf} inf values; the loss would be undefined")


def _check_probabilities(input: torch.Tensor, loss_name: str) -> None:
    """A single channel without activation is read as the foreground probability: refuse what cannot be one."""
    lowest, highest = (float(v) for v in torch.aminmax(input.detach()))
    if lowest < 0.0 or highest > 1.0:  # NaN compares False: the finiteness check names it instead
        raise ValueError(
            f"{loss_name} got a single-channel input with values in [{lowest:.4g}, {highest:.4g}] and no activation, "
            "so it would read them as probabilities. One channel is binary (the foreground): for logits pass "
            "sigmoid=True (softmax=True means the same on one channel), or pass probabilities in [0, 1]"
        )


def soft_target_losses() -> list[str]:
    """Registry names of the losses that accept soft (probabilistic) targets."""
    return [info.name for info in list_losses() if getattr(info.cls, "accepts_soft_target", False)]


def _check_one_hot(onehot: torch.Tensor, soft_targets: bool, loss_name: str) -> bool:
    """Check a one-hot (or soft) target; return whether it is soft (values strictly between 0 and 1)."""
    if not onehot.is_floating_point():
        soft = False
        outside = bool(((onehot != 0) & (onehot != 1)).any())
    else:
        lowest, highest = (float(v) for v in torch.aminmax(onehot.detach()))
        outside = not (lowest >= 0.0 and highest <= 1.0)  # NaN fails both
        soft = not outside and not bool(torch.all((onehot == 0) | (onehot == 1)))
    if outside:
        raise ValueError(
            f"{loss_name}: the one-hot target holds values outside [0, 1]; pass a (B, 1, ...) label map, a 0/1 "
            "one-hot target or, where the loss takes them, soft target probabilities in [0, 1]"
        )
    if soft and not soft_targets:
        raise ValueError(
            f"{loss_name} needs hard labels, but its one-hot target holds values other than 0 and 1 (a soft target): "
            "its definition reads each voxel's class. Pass a (B, 1, ...) label map or a 0/1 one-hot target. Losses "
            f"that take soft targets: {', '.join(soft_target_losses())}"
        )
    return soft


def _check_integer_labels(labels: torch.Tensor, num_classes: int, ignore_index: int | None) -> None:
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("label map target holds non-integer values; pass class indices or a one-hot target")
    valid = labels if ignore_index is None else torch.where(labels == ignore_index, torch.zeros_like(labels), labels)
    if valid.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(valid))
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"label value {bad} is out of range for {num_classes} classes (valid: 0..{num_classes - 1}"
            + (f", or ignore_index={ignore_index})" if ignore_index is not None else "; set ignore_index to skip it)")
        )


class SegmentationLoss(nn.Module):
    """Base class: MONAI's common loss arguments and the shared :meth:`prepare` step.

    Args:
        include_background: keep class 0 in the loss (MONAI's default ``True``).
        to_onehot_y: accepted for MONAI compatibility; a ``(B, 1, ...)`` label map is always expanded
            to one-hot when the input has more than one channel (on one channel it warns, as MONAI).
        sigmoid: apply a sigmoid to the input (binary or multi-label).
        softmax: apply a softmax over the channel dim (multi-class). A single channel is binary: the sigmoid, the
            softmax over the logits ``(0, x)`` (MONAI skips the softmax there and reads logits as probabilities).
        other_act: any other callable activation, applied to the logits instead.

    Without an activation the input is read as probabilities; a single channel outside [0, 1] raises ValueError.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        ignore_index: label value whose voxels take no part (e.g. 255 for Cityscapes). With a one-hot target,
            a value in ``0..C-1`` masks that class's voxels and any other value masks all-zero voxels (MONAI's rule).
    """

    #: names of the auxiliary tensors ``forward`` reads (e.g. ``("dist",)``); the registry lists them.
    aux_keys: tuple[str, ...] = ()
    #: ``softmax=True`` on one channel is the binary loss (the sigmoid) in every loss. Losses with MONAI's activation
    #: flags warn about it as MONAI does; a loss whose softmax is its own default (cross-entropy) sets False.
    warns_on_single_channel_softmax: bool = True
    #: the loss's formula holds for soft (probabilistic) targets in [0, 1], e.g. label smoothing or several raters;
    #: a loss that reads each voxel's class (distance maps, sorting, class counts) keeps False and refuses them.
    accepts_soft_target: bool = False
    #: NaN/inf logits always make this loss non-finite, so the input is inspected only then; a loss whose value
    #: can stay finite (thresholds, sorting, pooling) sets False and has its input checked before every call.
    nan_propagates: bool = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
            raise ValueError("choose at most one of sigmoid=True, softmax=True and other_act")
        if other_act is not None and not callable(other_act):
            raise TypeError(f"other_act must be callable, got {type(other_act).__name__}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unsupported reduction {reduction!r}; choose one of {REDUCTIONS}")
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.reduction = reduction
        self.ignore_index = ignore_index
        self._loss_name: str | None = None

    @property
    def loss_name(self) -> str:
        """How messages name this loss: registry name and class (``'dice' (DiceLoss)``), unless set (a compound
        names its terms after itself)."""
        return describe_loss(self) if self._loss_name is None else self._loss_name

    @loss_name.setter
    def loss_name(self, value: str) -> None:
        self._loss_name = value

    def __call__(self, input: torch.Tensor, target: torch.Tensor, **aux: torch.Tensor) -> torch.Tensor:
        if not self.nan_propagates and isinstance(input, torch.Tensor):
            _check_finite(input)
        loss = super().__call__(input, target, **aux)
        # NaN/inf logits make the loss non-finite: look at the input only then, instead of an extra pass every step
        if isinstance(loss, torch.Tensor) and isinstance(input, torch.Tensor) and not torch.isfinite(loss).all():
            _check_finite(input)
        return loss

    def prepare(self, input: torch.Tensor, target: torch.Tensor) -> Prepared:
        return prepare(
            input,
            target,
            include_background=self.include_background,
            sigmoid=self.sigmoid,
            softmax=self.softmax,
            other_act=self.other_act,
            ignore_index=self.ignore_index,
            loss_name=self.loss_name,
            warn_single_channel_softmax=self.warns_on_single_channel_softmax,
            soft_targets=self.accepts_soft_target,
            to_onehot_y=self.to_onehot_y,
        )


def class_weight_tensor(
    weight: Sequence[float] | float | torch.Tensor | None, name: str = "weight"
) -> torch.Tensor | None:
    """Validate a per-class weight argument and return it as a float tensor (or ``None``)."""
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=torch.float32)
    if w.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D sequence, got shape {tuple(w.shape)}")
    if (w < 0).any():
        raise ValueError(f"{name} values must be non-negative, got {w.tolist()}")
    return w


def apply_class_weight(loss: torch.Tensor, weight: torch.Tensor | None, class_dim: int = 1) -> torch.Tensor:
    """Multiply a per-class loss by ``weight`` along ``class_dim``, checking its length."""
    if weight is None:
        return loss
    if weight.ndim == 0:
        return loss * weight.to(loss)
    n = loss.shape[class_dim]
    if weight.numel() != n:
        raise ValueError(
            f"weight has {weight.numel()} entries but the loss has {n} classes"
            " (with include_background=False the weight must not include class 0)"
        )
    shape = [1] * loss.ndim
    shape[class_dim] = n
    return loss * weight.to(loss).view(shape)


def prepare(
    input: torch.Tensor,
    target: torch.Tensor,
    include_background: bool = True,
    sigmoid: bool = False,
    softmax: bool = False,
    other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ignore_index: int | None = None,
    loss_name: str = "the loss",
    warn_single_channel_softmax: bool = True,
    soft_targets: bool = False,
    to_onehot_y: bool = False,
) -> Prepared:
    """Validate ``input``/``target`` and return float32 probabilities, one-hot target and ignore mask.

    A single channel is binary (see the module docstring): ``softmax=True`` gives the sigmoid, with a warning
    unless ``warn_single_channel_softmax=False``; without an activation the probabilities must lie in [0, 1].
    ``soft_targets``: a ``(B, C, ...)`` target (or a float single-channel one) may hold any value in [0, 1]
    (label smoothing, distillation, several raters) and its channels need not sum to 1; the prepared ``labels`` are
    then ``None``. Otherwise it must be 0/1 (one class per voxel with ``softmax``) and anything else raises, naming
    the loss. ``to_onehot_y`` only adds MONAI's warning on one channel: a label map is expanded whenever the input
    has more than one channel.
    """
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("input and target must be torch tensors")
    if input.ndim < 3:
        raise ValueError(
            f"input must be (B, C, *spatial) with at least one spatial dim, got shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise ValueError(f"input must be floating point logits, got dtype {input.dtype}")
    if target.ndim != input.ndim or target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
        raise ShapeMismatchError(
            f"target shape {tuple(target.shape)} does not match input shape {tuple(input.shape)}: expected "
            f"(B, 1, *spatial) label map or (B, C, *spatial) one-hot with B and spatial dims equal to the input's"
        )
    num_classes = input.shape[1]
    if target.shape[1] not in (1, num_classes):
        raise ShapeMismatchError(
            f"target has {target.shape[1]} channels; expected 1 (label map) or {num_classes} (one-hot) "
            f"for input shape {tuple(input.shape)}"
        )
    logits = input.to(torch.promote_types(input.dtype, torch.float32))  # float32 math under autocast, float64 kept
    is_label_map = target.shape[1] == 1 and (
        num_classes > 1 or not target.is_floating_point() or ignore_index is not None
    )
    store = _shared_store(input, target)
    onehot: torch.Tensor | None = None
    if is_label_map:
        labels, mask = _memo(
            store,
            ("label_map", ignore_index, logits.dtype),
            lambda: _label_map(target, num_classes, ignore_index, logits.dtype),
        )
    else:
        onehot = target
        labels, mask = _memo(
            store,
            ("one_hot", ignore_index, logits.dtype, soft_targets, softmax),
            lambda: _one_hot_labels(target, num_classes, ignore_index, logits.dtype, softmax, soft_targets, loss_name),
        )

    if to_onehot_y and num_classes == 1:
        warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=3)
    if softmax and num_classes == 1:
        if warn_single_channel_softmax:
            warnings.warn(
                f"{loss_name}: single channel prediction, `softmax=True` read as binary: the sigmoid of the logit is "
                "the foreground probability (the softmax over the logits (0, x)); pass sigmoid=True to say so",
                stacklevel=3,
            )
        softmax, sigmoid = False, True
    if sigmoid:
        activation = "sigmoid"
    elif softmax:
        activation = "softmax"
    elif other_act is not None:
        activation = "other"
    else:
        activation = "none"

    classes = list(range(num_classes))
    if not include_background:
        if num_classes == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=3)
        else:
            classes = classes[1:]
    return Prepared(logits, labels, onehot, mask, classes, activation, other_act, loss_name, store)


def _label_map(
    target: torch.Tensor, num_classes: int, ignore_index: int | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Checked ``(B, *spatial)`` labels (ignored voxels set to 0) and the ignore mask of a label-map target."""
    _check_integer_labels(target, max(num_classes, 2), ignore_index)
    labels = target[:, 0].long()
    if ignore_index is None:
        return labels, None
    keep = labels != ignore_index
    return torch.where(keep, labels, torch.zeros_like(labels)), keep.unsqueeze(1).to(dtype)


def _one_hot_labels(
    onehot: torch.Tensor,
    num_classes: int,
    ignore_index: int | None,
    dtype: torch.dtype,
    softmax: bool,
    soft_targets: bool,
    loss_name: str,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Check a one-hot target; return its label map (exclusive classes under softmax, else ``None``) and mask."""
    soft = _check_one_hot(onehot, soft_targets, loss_name)
    mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    if ignore_index is not None:
        if 0 <= ignore_index < num_classes and num_classes > 1:
            keep = onehot[:, ignore_index] == 0
        else:
            keep = onehot.sum(1) > 0
        mask = keep.unsqueeze(1).to(dtype)
    if softmax and num_classes > 1 and not soft:
        sums = onehot.sum(1, keepdim=True)
        bad = sums != 1 if mask is None else (sums != 1) & (mask > 0)
        if not bad.any():
            labels = onehot.argmax(1)  # exclusive classes: the label map, for the losses that read it
        elif not soft_targets:
            raise ValueError(
                f"{loss_name}: the one-hot target is not one-hot: {int(bad.sum())} voxels have channel sums other "
                "than 1, so they have no class (to leave all-zero voxels out, pass an ignore_index outside "
                "0..C-1)"
            )
    return labels, mask
