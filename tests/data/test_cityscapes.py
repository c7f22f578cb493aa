"""Cityscapes: the official label table, labelIds -> trainIds with 255, datalists, labelIds PNG output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.data import (
    CITYSCAPES_LABELS,
    LABEL_ID_TO_TRAIN_ID,
    TRAIN_CLASS_NAMES,
    cityscapes_datalist,
    cityscapes_transforms,
    labelids_to_trainids,
    prediction_filename,
    save_labelids_png,
    trainids_to_labelids,
)

from ._helpers import copy_dataset, raises_naming

# labelId -> trainId of the 19 evaluated classes, as the data note documents them; every other id -> 255
DOCUMENTED = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12}
DOCUMENTED |= {26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def test_table_matches_the_documented_train_ids():
    assert LABEL_ID_TO_TRAIN_ID == {i: DOCUMENTED.get(i, 255) for i in range(34)}
    assert TRAIN_CLASS_NAMES[:3] == ("road", "sidewalk", "building") and TRAIN_CLASS_NAMES[-1] == "bicycle"
    assert len(TRAIN_CLASS_NAMES) == 19


def test_table_matches_cityscapesscripts():
    # installed without its dependencies (pip install --no-deps cityscapesscripts): the labels module needs none
    official = pytest.importorskip("cityscapesscripts.helpers.labels")
    ours = [(label.name, label.id, label.train_id, label.category, label.color) for label in CITYSCAPES_LABELS]
    theirs = [(label.name, label.id, label.trainId, label.category, label.color) for label in official.labels]
    assert ours == theirs


def test_label_ids_map_to_train_ids_with_255_for_the_rest():
    # road, sidewalk, unlabeled, ego vehicle, parking, license-plate-free car, bicycle, caravan
    label_ids = np.array([[7, 8, 0, 1], [9, 26, 33, 29]], dtype=np.uint8)
    expected = np.array([[0, 1, 255, 255], [255, 13, 18, 255]])
    np.testing.assert_array_equal(labelids_to_trainids(label_ids), expected)
    with pytest.raises(ValueError, match=r"my_labels.png holds unknown values \[34, 200\]"):
        labelids_to_trainids(np.array([[34, 200, 7]]), source="my_labels.png")


def test_predictions_round_trip_through_label_id_pngs(tmp_path):
    prediction = torch.tensor([[0, 1, 2], [13, 18, 10]])
    path = save_labelids_png(prediction, tmp_path / "out" / "aachen_000000_000019_labelIds.png")
    written = np.asarray(Image.open(path))
    assert written.dtype == np.uint8
    np.testing.assert_array_equal(written, [[7, 8, 11], [26, 33, 23]])
    np.testing.assert_array_equal(labelids_to_trainids(written), prediction.numpy())
    np.testing.assert_array_equal(trainids_to_labelids(np.array([5, 16])), [17, 31])
    with pytest.raises(ValueError, match=r"\[255\]"):
        save_labelids_png(np.array([[0, 255]]), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="one \\(H, W\\) prediction"):
        save_labelids_png(np.zeros((2, 2, 2), dtype=np.int64), tmp_path / "bad.png")
    assert prediction_filename("x/aachen/aachen_000012_000019_leftImg8bit.png") == "aachen_000012_000019_labelIds.png"
    with pytest.raises(ValueError, match="not a Cityscapes image name"):
        prediction_filename("aachen.png")


def test_datalist_pairs_images_with_their_labels(cityscapes_root):
    train = cityscapes_datalist(cityscapes_root, "train", val_fraction=0)  # every official training image
    assert len(train) == 5
    for item in train:
        image, label = Path(item["image"]), Path(item["label"])
        assert image.name == f"{item['name']}_leftImg8bit.png" and image.parent.name == item["city"]
        assert label == cityscapes_root / "gtFine" / "train" / item["city"] / f"{item['name']}_gtFine_labelIds.png"
    test = cityscapes_datalist(cityscapes_root, "test")
    assert len(test) == 1 and "label" not in test[0]
    with pytest.raises(ValueError, match="split must be"):
        cityscapes_datalist(cityscapes_root, "trainval")


def test_model_selection_holds_out_official_training_images(cityscapes_root):
    official = [item["name"] for item in cityscapes_datalist(cityscapes_root, "train", val_fraction=0)]
    # the documented rule: permute the sorted names with default_rng(1234), the first max(1, round(0.2 n)) are held out
    held_out = sorted(official)[int(np.random.default_rng(1234).permutation(5)[0])]
    assert [item["name"] for item in cityscapes_datalist(cityscapes_root, "train_holdout")] == [held_out]
    assert [item["name"] for item in cityscapes_datalist(cityscapes_root, "train")] == [
        name for name in official if name != held_out
    ]
    val = [item["image"] for item in cityscapes_datalist(cityscapes_root, "val")]  # the official val: the test set
    assert len(val) == 1 and "/leftImg8bit/val/" in val[0]


def test_transforms_give_train_ids_matching_the_label_png(cityscapes_root):
    item = cityscapes_datalist(cityscapes_root, "val")[0]
    raw_rgb = np.asarray(Image.open(item["image"]))
    raw_ids = np.asarray(Image.open(item["label"]))
    out = cityscapes_transforms(train=False)(item)
    assert out["image"].shape == (3, *raw_ids.shape) and out["label"].shape == (1, *raw_ids.shape)
    np.testing.assert_allclose(out["image"].numpy(), raw_rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)
    expected = np.vectorize(lambda i: DOCUMENTED.get(int(i), 255))(raw_ids)
    np.testing.assert_array_equal(out["label"][0].numpy(), expected)
    assert (expected == 255).any(), "the synthetic scenes hold ignored regions"
    cropping = cityscapes_transforms(train=True, crop_size=(16, 24))
    cropping.set_random_state(0)
    assert cropping(item)["label"].shape == (1, 16, 24)
    test_item = cityscapes_datalist(cityscapes_root, "test")[0]
    assert cityscapes_transforms(train=False)(test_item)["image"].shape[0] == 3


def test_label_train_ids_pngs_are_accepted(cityscapes_root, tmp_path):
    root = copy_dataset(cityscapes_root, tmp_path / "cityscapes")
    label_path = next((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    label_ids = np.asarray(Image.open(label_path))
    train_ids = np.vectorize(lambda i: DOCUMENTED.get(int(i), 255))(label_ids).astype(np.uint8)
    train_ids_path = Path(str(label_path).replace("_labelIds.png", "_labelTrainIds.png"))
    Image.fromarray(train_ids).save(train_ids_path)
    assert cityscapes_datalist(root, "val")[0]["label"] == str(label_path)  # labelIds preferred
    assert cityscapes_datalist(root, "val", prefer="labelTrainIds")[0]["label"] == str(train_ids_path)
    label_path.unlink()
    item = cityscapes_datalist(root, "val")[0]
    assert item["label"] == str(train_ids_path)
    np.testing.assert_array_equal(cityscapes_transforms(train=False)(item)["label"][0].numpy(), train_ids)
    train_ids[0, 0] = 19  # not a trainId
    Image.fromarray(train_ids).save(train_ids_path)
    with raises_naming(ValueError, f"{train_ids_path.name} holds unknown values [19]"):
        cityscapes_transforms(train=False)(item)


def test_unknown_label_ids_and_missing_files_are_named(cityscapes_root, tmp_path):
    root = copy_dataset(cityscapes_root, tmp_path / "cityscapes")
    label_path = next((root / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))
    label_ids = np.asarray(Image.open(label_path)).copy()
    label_ids[0, :2] = (34, 250)
    Image.fromarray(label_ids).save(label_path)
    item = next(i for i in cityscapes_datalist(root, "train", val_fraction=0) if i["label"] == str(label_path))
    with raises_naming(ValueError, f"{label_path.name} holds unknown values [34, 250]"):
        cityscapes_transforms(train=False)(item)
    Image.fromarray(np.zeros((*label_ids.shape, 3), np.uint8)).save(label_path)
    with raises_naming(ValueError, f"{label_path.name} has 3 channels"):
        cityscapes_transforms(train=False)(item)
    label_path.write_bytes(b"\x89PNG truncated")
    with raises_naming(ValueError, f"cannot read label file {label_path}"):
        cityscapes_transforms(train=False)(item)
    label_path.unlink()
    with pytest.raises(FileNotFoundError, match=label_path.name):
        cityscapes_datalist(root, "train")


def test_a_label_of_another_size_is_refused_naming_both_files(cityscapes_root, tmp_path):
    root = copy_dataset(cityscapes_root, tmp_path / "cityscapes")
    item = cityscapes_datalist(root, "val")[0]
    label_ids = np.asarray(Image.open(item["label"]))
    Image.fromarray(label_ids[:-2]).save(item["label"])  # two rows short
    height, width = label_ids.shape
    with raises_naming(ValueError, item["image"], item["label"], f"({height}, {width}) and ({height - 2}, {width})"):
        cityscapes_transforms(train=True, image_size=(16, 32), crop_size=(8, 8))(item)
