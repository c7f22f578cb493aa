"""Glue between medseg's losses and MONAI's Ignite engines.

MONAI's ``SupervisedTrainer`` calls ``loss_function(pred, label)``: there is no slot for the distance or weight
maps that boundary losses read. :class:`PrepareBatchWithAux` (MONAI's ``PrepareBatch`` interface) moves those
batch keys to the device and hands them to a :class:`BatchAuxLoss`, then returns ``(image, label)`` as usual, so
the engine's outputs, metrics and handlers stay standard. :class:`LossWeightSchedule` changes a
``CompoundLoss``'s weights each epoch (Kervadec et al.'s rebalancing of a region and a boundary term).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys
from torch import nn


class BatchAuxLoss(nn.Module):
    """Calls ``loss(pred, label, **aux)`` with the aux tensors of the current batch.

    The aux tensors are set by :class:`PrepareBatchWithAux` before each iteration; ``forward`` raises a clear error
    when a key the loss reads is missing (e.g. the data pipeline lacks ``DistanceMapd``).
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.aux: dict[str, torch.Tensor] = {}

    @property
    def aux_keys(self) -> tuple[str, ...]:
        return tuple(getattr(self.loss, "aux_keys", ()))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        missing = [k for k in self.aux_keys if k not in self.aux]
        if missing:
            raise ValueError(
                f"{type(self.loss).__name__} reads {missing} from the batch, but no such keys were handed over: add "
                "DistanceMapd (or the transform that makes them) to the training transforms and use "
                "medseg.engine.PrepareBatchWithAux as the trainer's prepare_batch"
            )
        return self.loss(input, target, **{k: self.aux[k] for k in self.aux_keys})


class PrepareBatchWithAux(PrepareBatch):
    """``prepare_batch`` for MONAI engines: returns ``(image, label)`` and hands the aux keys to the loss.

    Args:
        loss: the trainer's loss function, a :class:`BatchAuxLoss`.
        aux_keys: batch keys to hand over (default: the keys the loss reads).
        image_key, label_key: the batch keys of the network input and the target.
    """

    def __init__(
        self,
        loss: BatchAuxLoss,
        aux_keys: Sequence[str] | None = None,
        image_key: str = CommonKeys.IMAGE,
        label_key: str = CommonKeys.LABEL,
    ) -> None:
        if not isinstance(loss, BatchAuxLoss):
            raise TypeError(f"loss must be a medseg.engine.BatchAuxLoss, got {type(loss).__name__}")
        self.loss = loss
        self.aux_keys = tuple(aux_keys) if aux_keys is not None else loss.aux_keys
        self.image_key = image_key
        self.label_key = label_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [k for k in (self.image_key, self.label_key, *self.aux_keys) if k not in batchdata]
        if missing:
            raise KeyError(f"batch lacks keys {missing} (has {sorted(batchdata)})")

        def to_device(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, non_blocking=non_blocking, **kwargs)

        self.loss.aux = {k: to_device(batchdata[k]) for k in self.aux_keys}
        return to_device(batchdata[self.image_key]), to_device(batchdata[self.label_key])


def rebalance_schedule(region: str, boundary: str, step: float = 0.01, floor: float = 0.01, start: float = 1.0):
    """Kervadec et al. (MIDL 2019): region weight α starts at ``start`` and falls by ``step`` per epoch to
    ``floor``; the boundary term gets 1 − α. Returns ``epoch -> {name: weight}`` (epochs count from 1)."""

    def weights(epoch: int) -> dict[str, float]:
        alpha = max(start - step * (epoch - 1), floor)
        return {region: alpha, boundary: 1.0 - alpha}

    return weights


class LossWeightSchedule:
    """Ignite handler: at the start of every epoch, set a ``CompoundLoss``'s weights from ``schedule(epoch)``.

    Weights are a function of the epoch number, not a running state, so a run resumed from a checkpoint gets the
    same weights as an uninterrupted one.

    Args:
        loss: a ``CompoundLoss`` (or a :class:`BatchAuxLoss` wrapping one).
        schedule: ``epoch -> {term name: weight}``, e.g. :func:`rebalance_schedule`.
    """

    def __init__(self, loss: nn.Module, schedule: Callable[[int], Mapping[str, float]]) -> None:
        self.loss = loss.loss if isinstance(loss, BatchAuxLoss) else loss
        if not hasattr(self.loss, "set_weight"):
            raise TypeError(f"LossWeightSchedule needs a CompoundLoss, got {type(self.loss).__name__}")
        self.schedule = schedule

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        for name, weight in self.schedule(engine.state.epoch).items():
            self.loss.set_weight(name, weight)
