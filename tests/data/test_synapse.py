"""Synapse in TransUNet's layout: datalists from the split lists, npz/h5 loading, transforms, clear errors."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

from medseg.data import (
    DEFAULT_BTCV_TO_SYNAPSE,
    LoadArrayd,
    synapse_datalist,
    synapse_organ_names,
    synapse_slice_transforms,
    synapse_volume_transforms,
)

from ._helpers import copy_dataset, raises_naming
from .conftest import SIZE


def test_organ_names_follow_the_mapping():
    assert synapse_organ_names() == {
        1: "spleen",
        2: "right kidney",
        3: "left kidney",
        4: "gallbladder",
        5: "liver",
        6: "stomach",
        7: "aorta",
        8: "pancreas",
    }
    assert DEFAULT_BTCV_TO_SYNAPSE == {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}
    # another preprocessing that numbers the organs alphabetically: aorta 1, gallbladder 2, ...
    alphabetical = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
    assert synapse_organ_names(alphabetical)[1] == "aorta" and synapse_organ_names(alphabetical)[7] == "spleen"
    with pytest.raises(ValueError, match="once each"):
        synapse_organ_names({1: 1, 2: 1})
    with pytest.raises(ValueError, match="does not define"):
        synapse_organ_names({14: 1})


def test_datalists_follow_the_split_lists(transunet_root):
    lists = transunet_root / "lists" / "lists_Synapse"
    listed_slices = lists.joinpath("train.txt").read_text().split()
    train = synapse_datalist(transunet_root, "train", val_fraction=0)  # every training case, as TransUNet trains
    assert [item["name"] for item in train] == listed_slices
    assert train[0]["image"] == train[0]["label"] == str(transunet_root / "train_npz" / f"{listed_slices[0]}.npz")
    assert train[0]["case"] == listed_slices[0][:8]
    test = synapse_datalist(transunet_root, "test", list_dir=lists)
    assert [item["name"] for item in test] == ["case0001", "case0002"]
    assert test[1]["image"].endswith("test_vol_h5/case0002.npy.h5")
    with pytest.raises(ValueError, match="split must be"):
        synapse_datalist(transunet_root, "validation")


def test_validation_slices_are_whole_training_cases(transunet_root):
    listed_slices = (transunet_root / "lists" / "lists_Synapse" / "train.txt").read_text().split()
    training_cases = sorted({name[:8] for name in listed_slices})
    assert training_cases == ["case0005", "case0006", "case0007"]
    # the documented rule: permute the sorted cases with default_rng(1234), the first max(1, round(0.2 n)) validate
    held_out = training_cases[int(np.random.default_rng(1234).permutation(3)[0])]
    val, train = synapse_datalist(transunet_root, "val"), synapse_datalist(transunet_root, "train")
    assert {item["case"] for item in val} == {held_out}
    assert [item["name"] for item in val] == [n for n in listed_slices if n.startswith(held_out)]
    assert [item["name"] for item in train] == [n for n in listed_slices if not n.startswith(held_out)]
    test_cases = {item["case"] for item in synapse_datalist(transunet_root, "test")}
    assert not test_cases & {item["case"] for item in val + train}
    with pytest.raises(ValueError, match="no validation split with val_fraction=0"):
        synapse_datalist(transunet_root, "val", val_fraction=0)


def test_slice_transforms_give_resized_slices_with_synapse_labels(transunet_root):
    item = synapse_datalist(transunet_root, "train")[len(synapse_datalist(transunet_root, "train")) // 2]
    with np.load(item["image"]) as raw:
        raw_image, raw_label = raw["image"], raw["label"]
    out = synapse_slice_transforms(train=False, image_size=SIZE)(item)
    assert out["image"].shape == out["label"].shape == (1, SIZE, SIZE)
    # same size: the resize is the identity (bicubic at the pixel centres), labels untouched
    np.testing.assert_allclose(out["image"][0].numpy(), raw_image, atol=1e-5)
    np.testing.assert_array_equal(out["label"][0].numpy(), raw_label)
    larger = synapse_slice_transforms(train=False, image_size=2 * SIZE)(item)
    assert larger["image"].shape == (1, 2 * SIZE, 2 * SIZE)
    assert set(torch.unique(larger["label"]).tolist()) == set(np.unique(raw_label).tolist())
    augmenting = synapse_slice_transforms(train=True, image_size=SIZE)
    augmenting.set_random_state(0)
    for _ in range(4):
        augmented = augmenting(item)
        assert augmented["image"].shape == (1, SIZE, SIZE)
        assert set(torch.unique(augmented["label"]).tolist()) <= set(range(9))


def test_volume_transforms_give_whole_volumes(transunet_root):
    item = synapse_datalist(transunet_root, "test")[0]
    with h5py.File(item["image"]) as raw:
        raw_image, raw_label = raw["image"][()], raw["label"][()]
    out = synapse_volume_transforms()(item)
    assert out["image"].shape == (1, *raw_image.shape) and raw_image.shape[1:] == (SIZE, SIZE)
    np.testing.assert_array_equal(out["image"][0].numpy(), raw_image)
    np.testing.assert_array_equal(out["label"][0].numpy(), raw_label)
    assert out["label"].meta["filename_or_obj"] == item["label"]


def test_a_listed_slice_that_is_missing_is_named(transunet_root, tmp_path):
    root = copy_dataset(transunet_root, tmp_path / "synapse")
    victim = root / "train_npz" / "case0006_slice002.npz"
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("case0006_slice002.npz")):
        synapse_datalist(root, "train")
    (root / "lists" / "lists_Synapse" / "test_vol.txt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("test_vol.txt")):
        synapse_datalist(root, "test")


def test_a_malformed_list_line_is_named(transunet_root, tmp_path):
    root = copy_dataset(transunet_root, tmp_path / "synapse")
    (root / "lists" / "lists_Synapse" / "train.txt").write_text("case0005_slice000\ncase5 slice 1\n")
    with pytest.raises(ValueError, match=re.escape("train.txt, line 2: 'case5 slice 1'")):
        synapse_datalist(root, "train")


def test_an_npz_without_label_is_named(tmp_path):
    path = tmp_path / "case0005_slice000.npz"
    np.savez(path, image=np.zeros((4, 4), np.float32), mask=np.zeros((4, 4)))
    with raises_naming(ValueError, "case0005_slice000.npz has no array named 'label' (it holds ['image', 'mask'])"):
        synapse_slice_transforms(train=False, image_size=4)({"image": str(path), "label": str(path)})


def test_corrupt_npz_and_h5_files_are_named(tmp_path):
    truncated = tmp_path / "case0005_slice001.npz"
    np.savez(truncated, image=np.zeros((8, 8), np.float32), label=np.zeros((8, 8), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot read .*case0005_slice001\.npz"):
        LoadArrayd(["image", "label"])({"image": str(truncated), "label": str(truncated)})
    broken = tmp_path / "case0001.npy.h5"
    broken.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match=r"cannot read .*case0001\.npy\.h5"):
        LoadArrayd(["image"])({"image": str(broken)})
    no_label = tmp_path / "case0002.npy.h5"
    with h5py.File(no_label, "w") as volume:
        volume.create_dataset("image", data=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=re.escape("case0002.npy.h5 has no array named 'label'")):
        LoadArrayd(["image", "label"])({"image": str(no_label), "label": str(no_label)})
    with pytest.raises(FileNotFoundError, match=re.escape("case0003.npy.h5")):
        LoadArrayd(["image"])({"image": str(tmp_path / "case0003.npy.h5")})


def test_labels_outside_the_synapse_classes_are_refused(tmp_path):
    path = tmp_path / "case0005_slice000.npz"
    label = np.zeros((4, 4), np.float32)
    label[0, 0], label[1, 1] = 11, 13  # raw BTCV values in a Synapse file
    np.savez(path, image=np.zeros((4, 4), np.float32), label=label)
    with raises_naming(ValueError, "case0005_slice000.npz holds unknown values [11, 13]"):
        synapse_volume_transforms()({"image": str(path), "label": str(path)})
    label[0, 0], label[1, 1] = 2.5, 0
    np.savez(path, image=np.zeros((4, 4), np.float32), label=label)
    with raises_naming(ValueError, "case0005_slice000.npz holds non-integer values"):
        synapse_volume_transforms()({"image": str(path), "label": str(path)})


def test_an_npz_label_of_another_shape_is_refused_not_resized(tmp_path):
    path = tmp_path / "case0005_slice000.npz"
    np.savez(path, image=np.zeros((8, 8), np.float32), label=np.zeros((5, 8), np.float32))  # 3 rows short
    with raises_naming(ValueError, f"image file {path} and label file {path}", "(8, 8) and (5, 8) differ"):
        synapse_slice_transforms(train=True, image_size=16)({"image": str(path), "label": str(path)})


def test_an_h5_label_of_another_shape_is_refused(tmp_path):
    path = tmp_path / "case0001.npy.h5"
    with h5py.File(path, "w") as volume:
        volume.create_dataset("image", data=np.zeros((4, 8, 8), np.float32))
        volume.create_dataset("label", data=np.zeros((3, 8, 8), np.float32))  # a slice short
    with raises_naming(ValueError, str(path), "(4, 8, 8) and (3, 8, 8) differ"):
        synapse_volume_transforms(image_size=16)({"image": str(path), "label": str(path)})
