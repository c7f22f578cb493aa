"""PrepareBatchWithAux hands batch keys to the loss inside MONAI's SupervisedTrainer; weights follow the epoch."""

from __future__ import annotations

import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedTrainer
from monai.transforms import Compose, MapTransform, RandFlipd, RandSpatialCropd
from torch import nn

from medseg.engine import BatchAuxLoss, LossWeightSchedule, PrepareBatchWithAux, rebalance_schedule
from medseg.losses import CompoundLoss


class CountingLabelCopy(MapTransform):
    """Deterministic stand-in for a distance-map transform: dist = 2·label, counting its calls."""

    calls = 0

    def __call__(self, data):
        type(self).calls += 1
        d = dict(data)
        d["dist"] = d["label"].float() * 2
        return d


class AuxCheckingLoss(nn.Module):
    """Squared error that also asserts the aux map is the one made from *this* batch's (cropped, flipped) label."""

    aux_keys = ("dist",)

    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, input, target, dist=None):
        if dist is None:
            raise ValueError("AuxCheckingLoss needs the 'dist' map")
        assert dist.shape == target.shape
        assert torch.equal(dist, target.float() * 2), "dist is not aligned with the label"
        self.seen += 1
        return ((input - target) ** 2).mean()


def make_items(n=3):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randn(1, 12, 10, generator=g), "label": torch.randint(0, 2, (1, 12, 10), generator=g)}
        for _ in range(n)
    ]


def test_trainer_hands_cached_aux_to_loss_and_transform_runs_once_per_item():
    CountingLabelCopy.calls = 0
    transforms = Compose(
        [
            CountingLabelCopy(keys="label"),
            RandSpatialCropd(keys=["image", "label", "dist"], roi_size=(8, 8), random_size=False),
            RandFlipd(keys=["image", "label", "dist"], prob=0.5, spatial_axis=0),
        ]
    )
    dataset = CacheDataset(make_items(3), transforms, cache_rate=1.0, progress=False)
    loader = DataLoader(dataset, batch_size=1, shuffle=False)
    loss = BatchAuxLoss(AuxCheckingLoss())
    net = nn.Conv2d(1, 1, 3, padding=1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=loss,
        prepare_batch=PrepareBatchWithAux(loss),
    )
    trainer.run()
    assert CountingLabelCopy.calls == 3  # cached: once per item, not once per epoch
    assert loss.loss.seen == 6
    assert trainer.state.output[0]["pred"].shape == (1, 8, 8)  # decollated by the engine


def test_aux_keys_the_batch_lacks_are_left_to_the_loss():
    loss = BatchAuxLoss(AuxCheckingLoss())
    image, label = PrepareBatchWithAux(loss)({"image": torch.zeros(1, 1, 4, 4), "label": torch.zeros(1, 1, 4, 4)})
    assert loss.aux == {}
    with pytest.raises(ValueError, match="needs the 'dist' map"):
        loss(image, label)
    with pytest.raises(KeyError, match="label"):
        PrepareBatchWithAux(loss)({"image": torch.zeros(1)})


def test_rebalance_schedule_follows_kervadec():
    schedule = rebalance_schedule("dice", "boundary", step=0.01, floor=0.01)
    assert schedule(1) == {"dice": 1.0, "boundary": 0.0}
    assert schedule(11)["dice"] == pytest.approx(0.90)
    assert schedule(11)["boundary"] == pytest.approx(0.10)
    assert schedule(500) == {"dice": 0.01, "boundary": pytest.approx(0.99)}


class WeightRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def set_weight(self, name, value):
        self.weights[name] = value


def test_weight_schedule_sets_weights_at_each_epoch_start():
    from ignite.engine import Engine, Events

    recorder = WeightRecorder()
    engine = Engine(lambda e, b: None)
    LossWeightSchedule(BatchAuxLoss(recorder), rebalance_schedule("dice", "boundary", step=0.1)).attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(recorder.weights)))
    engine.run([0], max_epochs=3)
    assert [round(s["dice"], 6) for s in seen] == [1.0, 0.9, 0.8]


def test_weight_schedule_drives_a_real_compound_loss():
    from ignite.engine import Engine, Events

    loss = CompoundLoss({"dice": 1.0, "boundary": 0.0}, loss_kwargs={"dice": {"softmax": True}})
    engine = Engine(lambda e, b: None)
    LossWeightSchedule(BatchAuxLoss(loss), rebalance_schedule("dice", "boundary", step=0.25, floor=0.5)).attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(loss.weights))
    engine.run([0], max_epochs=4)
    assert [w["dice"] for w in seen] == [1.0, 0.75, 0.5, 0.5]  # falls by 0.25 per epoch to the floor
    assert [w["boundary"] for w in seen] == [0.0, 0.25, 0.5, 0.5]


def dice_boundary_trainer(dataset: CacheDataset) -> tuple[SupervisedTrainer, BatchAuxLoss, CompoundLoss]:
    """One epoch of a 2-class conv net on ``dataset`` with 0.5·Dice + 0.5·boundary, maps handed over by the batch."""
    compound = CompoundLoss(
        {"dice": 0.5, "boundary": 0.5}, loss_kwargs={"dice": {"softmax": True}, "boundary": {"softmax": True}}
    )
    loss = BatchAuxLoss(compound)
    net = nn.Conv2d(1, 2, 3, padding=1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(dataset, batch_size=1),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=loss,
        prepare_batch=PrepareBatchWithAux(loss),
    )
    return trainer, loss, compound


def test_three_iterations_with_distancemapd_and_a_boundary_loss():
    from medseg.transforms import DistanceMapd

    class CountingDistanceMapd(DistanceMapd):
        calls = 0

        def __call__(self, data):
            type(self).calls += 1
            return super().__call__(data)

    keys = ["image", "label", "dist"]
    transforms = Compose(
        [
            CountingDistanceMapd(keys="label", mode="signed", num_classes=2, output_key="dist"),
            RandSpatialCropd(keys=keys, roi_size=(8, 8), random_size=False),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        ]
    )
    dataset = CacheDataset(make_items(3), transforms, cache_rate=1.0, progress=False)
    trainer, loss, compound = dice_boundary_trainer(dataset)
    trainer.run()
    assert trainer.state.iteration == 3
    assert CountingDistanceMapd.calls == 3  # computed once per item when the cache was built
    assert loss.aux["dist"].shape == (1, 2, 8, 8)  # the cropped map of the last batch reached the loss
    assert torch.isfinite(compound.last_values["boundary"])


def distance_map_trainer(mode: str, strip_meta: bool, affine: torch.Tensor | None = None):
    """A SupervisedTrainer on Dice + boundary, with DistanceMapd(mode) cached and then sampled, flipped, collated."""
    from monai.data import MetaTensor
    from monai.transforms import EnsureTyped, RandCropByPosNegLabeld

    from medseg.transforms import DistanceMapd

    items = make_items(3)
    if affine is not None:
        items = [{k: MetaTensor(v, affine=affine) for k, v in item.items()} for item in items]
    keys = ["image", "label", "dist"]
    chain = [
        DistanceMapd(keys="label", mode=mode, num_classes=2, output_key="dist"),
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=(8, 8), num_samples=2),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
    ]
    if strip_meta:  # as the bundles end their chains: the map's own meta is gone, the sidecar key remains
        chain.append(EnsureTyped(keys, track_meta=False))
    dataset = CacheDataset(items, Compose(chain), cache_rate=1.0, progress=False)
    trainer, loss, _ = dice_boundary_trainer(dataset)
    return trainer, loss


@pytest.mark.parametrize("strip_meta", [False, True], ids=["metatensor", "sidecar"])
def test_a_cached_map_of_another_mode_stops_training_with_a_clear_error(strip_meta):
    trainer, _ = distance_map_trainer("penalty", strip_meta)
    with pytest.raises(ValueError, match=r"BoundaryLoss reads the 'dist' map of DistanceMapd mode 'signed'.*'penalty'"):
        trainer.run()


@pytest.mark.parametrize("strip_meta", [False, True], ids=["metatensor", "sidecar"])
def test_the_map_record_reaches_the_loss_through_cache_crop_flip_and_collation(strip_meta):
    from medseg.transforms import read_map_record

    spacing = (0.8, 1.25)
    affine = torch.diag(torch.tensor([*spacing, 1.0, 1.0], dtype=torch.float64))
    trainer, loss = distance_map_trainer("signed", strip_meta, affine)
    trainer.run()
    assert trainer.state.iteration == 3  # one case (two patches) per batch
    record = read_map_record(loss.aux["dist"])
    assert record.modes == ("signed", "signed")
    assert torch.equal(record.spacings, torch.tensor([spacing, spacing], dtype=torch.float64))
    assert torch.isfinite(loss.loss.last_values["boundary"])
