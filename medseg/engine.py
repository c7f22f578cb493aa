"""Glue between medseg's losses and MONAI's Ignite engines.

MONAI's ``SupervisedTrainer`` calls ``loss_function(pred, label)``: there is no slot for the distance or weight
maps that boundary losses read. :class:`PrepareBatchWithAux` (MONAI's ``PrepareBatch`` interface) moves those
batch keys to the device and hands them to a :class:`BatchAuxLoss`, then returns ``(image, label)`` as usual, so
the engine's outputs, metrics and handlers stay standard. :class:`LossWeightSchedule` changes a
``CompoundLoss``'s weights each epoch (Kervadec et al.'s rebalancing of a region and a boundary term).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys
from torch import nn

from .transforms._record import sidecar_key, with_map_record


class BatchAuxLoss(nn.Module):
    """Calls ``loss(pred, label, **aux)`` with the aux tensors of the current batch.

    The aux tensors are set by :class:`PrepareBatchWithAux` before each iteration. A key the batch does not carry
    is not passed: losses that can compute their map on the fly do so (the slow path), the others raise a clear
    error naming the missing map. A ``CompoundLoss`` whose terms read one aux key in different ``DistanceMapd``
    modes (their ``map_mode``) is refused here: one map cannot serve both.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        check_shared_maps(loss)
        self.loss = loss
        self.aux: dict[str, torch.Tensor] = {}

    @property
    def aux_keys(self) -> tuple[str, ...]:
        return tuple(getattr(self.loss, "aux_keys", ()))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(input, target, **{k: v for k, v in self.aux.items() if k in self.aux_keys})


def check_shared_maps(loss: nn.Module) -> None:
    """Raise when terms of a ``CompoundLoss`` read one aux key in different map modes (their ``map_mode``)."""
    terms = getattr(loss, "terms", None)
    if not isinstance(terms, nn.ModuleDict | Mapping):
        return
    readers: dict[str, dict[str, list[str]]] = {}
    for name, term in terms.items():
        mode = getattr(term, "map_mode", None)
        if mode is None:
            continue
        for key in getattr(term, "aux_keys", ()):
            readers.setdefault(key, {}).setdefault(mode, []).append(name)
    for key, modes in readers.items():
        if len(modes) > 1:
            listed = "; ".join(f"{', '.join(names)} read mode {mode!r}" for mode, names in modes.items())
            raise ValueError(
                f"CompoundLoss terms read the aux map {key!r} in different DistanceMapd modes ({listed}): one "
                f"{key!r} map cannot serve them all, and CompoundLoss gives every term the same {key!r}"
            )


class PrepareBatchWithAux(PrepareBatch):
    """``prepare_batch`` for MONAI engines: returns ``(image, label)`` and hands the aux keys to the loss.

    A map's record (mode, spacing) in its ``DistanceMapd`` sidecar key ``f"{key}_meta_dict"`` goes with it: the
    loss gets a MetaTensor carrying it (see :func:`medseg.transforms.with_map_record`) and checks it.

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
        missing = [k for k in (self.image_key, self.label_key) if k not in batchdata]
        if missing:
            raise KeyError(f"batch lacks keys {missing} (has {sorted(batchdata)})")

        def to_device(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, non_blocking=non_blocking, **kwargs)

        self.loss.aux = {
            k: with_map_record(to_device(batchdata[k]), batchdata.get(sidecar_key(k)))
            for k in self.aux_keys
            if k in batchdata
        }
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


def trainable_parameters(network: nn.Module, loss: nn.Module) -> list[nn.Parameter]:
    """The network's parameters plus any the loss learns (e.g. the Robust T-Loss's ν), for the optimizer."""
    return [p for p in (*network.parameters(), *loss.parameters()) if p.requires_grad]


def last_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest ``*_epoch=N.pt`` file that MONAI's ``CheckpointSaver(save_interval=...)`` wrote, or None."""
    from .checkpoint import epoch_checkpoints

    found = epoch_checkpoints(ckpt_dir)
    return found[0] if found else None


class ResumeFromCheckpoint:
    """Ignite handler: continue an interrupted run from the newest readable epoch checkpoint in ``ckpt_dir``.

    Wraps MONAI's ``CheckpointLoader`` (network, optimizer and trainer state, so the epoch count and the optimizer's
    moments carry on; with a :class:`medseg.checkpoint.RandomStates` in ``load_dict``, the random state too).
    A checkpoint that cannot be read or lacks a key of ``load_dict`` (a half-written file) is skipped with a
    warning, and the one before it is used; the log names the file resumed from. Does nothing when ``enabled`` is
    false or no checkpoint is there yet. Which run's checkpoints these are is checked before, by
    :class:`medseg.runs.RunFolder`.
    """

    def __init__(
        self,
        ckpt_dir: str,
        load_dict: Mapping[str, Any],
        enabled: bool = True,
        map_location: str | torch.device | None = None,
    ) -> None:
        self.ckpt_dir = ckpt_dir
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.map_location = map_location
        self.loaded_from: Path | None = None

    def attach(self, engine) -> None:
        from monai.handlers import CheckpointLoader

        from .checkpoint import newest_readable_checkpoint

        found = newest_readable_checkpoint(self.ckpt_dir, self.load_dict, "cpu") if self.enabled else None
        if found is None:
            return
        self.loaded_from = found[0]
        del found  # the loader reads it again at Events.STARTED; no need to hold a second copy until then
        logging.getLogger(__name__).info("resuming from %s", self.loaded_from)
        CheckpointLoader(str(self.loaded_from), self.load_dict, map_location=self.map_location).attach(engine)


def enabled_handlers(handlers: Sequence[Any], loss_schedule: Callable | None = None, loss: nn.Module | None = None):
    """The bundle's handler list without ``None`` entries, plus a :class:`LossWeightSchedule` when configured."""
    out = [h for h in handlers if h is not None]
    if loss_schedule is not None:
        if loss is None:
            raise ValueError("a loss_schedule needs the loss it schedules")
        out.append(LossWeightSchedule(loss, loss_schedule))
    return out  # the progress bar over epochs is the bundles' medseg.console.EpochSummary


def check_num_classes(network: nn.Module, num_classes: int, roi_size: Sequence[int] | None = None) -> None:
    """Raise a clear error when the network's output channels differ from ``num_classes``."""
    out_channels = getattr(network, "out_channels", None)
    if out_channels is None and roi_size is not None:
        device = next(network.parameters()).device
        in_channels = getattr(network, "in_channels", 1)
        was_training = network.training
        network.eval()
        with torch.no_grad():
            out_channels = network(torch.zeros(1, in_channels, *roi_size, device=device)).shape[1]
        network.train(was_training)
    if out_channels is not None and int(out_channels) != int(num_classes):
        raise ValueError(
            f"the network outputs {out_channels} channels but num_classes is {num_classes}: set the network's "
            "out_channels to num_classes (or override num_classes)"
        )


def rank_zero_handlers(handlers: Sequence[Any], rank: int) -> list[Any]:
    """For DDP: every rank resumes and validates; only rank 0 saves checkpoints and writes logs."""
    if rank == 0:
        return list(handlers)
    from monai.handlers import ValidationHandler

    return [h for h in handlers if isinstance(h, ResumeFromCheckpoint | ValidationHandler)]
