"""The synthetic datasets can be learned: a small U-Net trained under a minute on CPU with Dice + CE beats chance.

Numbers are recorded in docs/data.md. Chance is the expected Dice of a prediction that labels every voxel
independently with the training class frequencies: 2 q f / (q + f) for a class of training frequency q and
true frequency f in the evaluated image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.networks.nets import UNet
from monai.utils import set_determinism

from medseg.data import (
    cityscapes_datalist,
    cityscapes_transforms,
    make_cityscapes,
    make_synapse,
    synapse_datalist,
    synapse_slice_transforms,
    synapse_volume_transforms,
)
from medseg.losses import CrossEntropyLoss, DiceLoss

pytestmark = pytest.mark.slow


def train_unet(dataset, in_channels: int, num_classes: int, iterations: int, batch_size: int, ignore_index=None):
    """Adam 1e-2 with poly decay, 0.5 Dice + 0.5 CE (TransUNet's weighting), a 4-level MONAI U-Net."""
    net = UNet(2, in_channels, num_classes, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)
    dice = DiceLoss(softmax=True, ignore_index=ignore_index)
    cross_entropy = CrossEntropyLoss(ignore_index=ignore_index)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=iterations, power=0.9)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    step = 0
    while step < iterations:
        for batch in loader:
            logits = net(batch["image"])
            loss = 0.5 * dice(logits, batch["label"]) + 0.5 * cross_entropy(logits, batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step == iterations:
                break
    return net.eval()


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * np.logical_and(prediction, truth).sum() / (prediction.sum() + truth.sum())


@pytest.fixture(autouse=True)
def deterministic():
    # one thread: as fast as two for these small convolutions, and immune to the many-fold slowdown that
    # OpenMP barriers suffer when other processes share the two cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    set_determinism(seed=0)
    yield
    set_determinism(seed=None)
    torch.set_num_threads(threads)


def test_synapse_slices_are_learnable(tmp_path):
    root = make_synapse(tmp_path, "transunet", cases=16, size=64, seed=0)  # 10 train, 6 test volumes
    # no model selection here: every training case trains (val_fraction=0), the test volumes only score
    train_items = synapse_datalist(root, "train", val_fraction=0)
    train = CacheDataset(train_items, synapse_slice_transforms(False, 64), progress=False)
    net = train_unet(train, 1, 9, iterations=1000, batch_size=8)
    frequency = np.bincount(np.concatenate([item["label"].numpy().ravel().astype(int) for item in train]), minlength=9)
    prior = frequency / frequency.sum()
    scores, chance = {c: [] for c in range(1, 9)}, {c: [] for c in range(1, 9)}
    with torch.no_grad():
        for item in synapse_datalist(root, "test"):
            volume = synapse_volume_transforms()(item)
            label = volume["label"][0].numpy()
            prediction = net(volume["image"][0][:, None]).argmax(1).numpy()  # slice by slice, as TransUNet
            for organ in range(1, 9):
                if (label == organ).any():
                    scores[organ].append(dice(prediction == organ, label == organ))
                    truth = (label == organ).mean()
                    chance[organ].append(2 * prior[organ] * truth / (prior[organ] + truth))
    mean_dice = np.mean([np.mean(v) for v in scores.values()])
    mean_chance = np.mean([np.mean(v) for v in chance.values()])
    print(f"synapse: mean Dice {mean_dice:.3f}, chance {mean_chance:.3f}")
    assert mean_dice > 0.5 and mean_dice > 10 * mean_chance


def test_cityscapes_scenes_are_learnable(tmp_path):
    root = make_cityscapes(tmp_path, cases=24, size=128, seed=0)  # 21 train, 3 val images of 128x64
    train_items = cityscapes_datalist(root, "train", val_fraction=0)  # no model selection: all 21 train
    train = CacheDataset(train_items, cityscapes_transforms(False), progress=False)
    net = train_unet(train, 3, 19, iterations=500, batch_size=4, ignore_index=255)
    labels = np.concatenate([item["label"].numpy().ravel() for item in train])
    frequency = np.bincount(labels[labels != 255].astype(int), minlength=19)
    prior = frequency / frequency.sum()
    predictions, truths = [], []
    with torch.no_grad():
        for item in cityscapes_datalist(root, "val"):
            image = cityscapes_transforms(False)(item)
            truths.append(image["label"][0].numpy())
            predictions.append(net(image["image"][None]).argmax(1)[0].numpy())
    prediction, truth = np.concatenate(predictions), np.concatenate(truths)
    valid = truth != 255
    present = [c for c in range(19) if (truth == c).any()]
    # pooled over the val images, ignored pixels excluded (as the official evaluation pools its counts)
    scores = [dice((prediction == c) & valid, truth == c) for c in present]
    chance = [2 * prior[c] * (truth[valid] == c).mean() / (prior[c] + (truth[valid] == c).mean()) for c in present]
    print(f"cityscapes: mean Dice {np.mean(scores):.3f} over {len(present)} classes, chance {np.mean(chance):.3f}")
    assert np.mean(scores) > 0.5 and np.mean(scores) > 5 * np.mean(chance)
