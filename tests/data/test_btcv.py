"""Raw BTCV under the Synapse protocol: case discovery, split and fallback, NIfTI reading, 13 -> 8 labels."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from medseg.data import ReadImaged, btcv_cases, btcv_datalist, btcv_transforms

from ._helpers import copy_dataset, raises_naming

# the Synapse split, written out from the data note
TRAIN = [5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40]
TEST = [1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38]


def touch_cases(root: Path, case_ids) -> Path:
    """Empty image/label files: enough for case discovery and splitting, which never read them."""
    for folder, prefix in (("img", "img"), ("label", "label")):
        target = root / "RawData" / "Training" / folder
        target.mkdir(parents=True, exist_ok=True)
        for case_id in case_ids:
            (target / f"{prefix}{case_id:04d}.nii.gz").touch()
    return root


def write_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)
    return path


def names(datalist) -> list[str]:
    return [item["name"] for item in datalist]


def case_names(case_ids) -> list[str]:
    return [f"case{c:04d}" for c in sorted(case_ids)]


def seeded_holdout(case_ids, fraction: float = 0.2, seed: int = 1234) -> list:
    """The documented validation rule written out: permute the sorted ids with default_rng(seed), the first
    round(fraction·n) (at least one) are validation cases."""
    ordered = sorted(case_ids)
    n_val = max(1, round(fraction * len(ordered)))
    return sorted(ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))[:n_val])


def test_all_thirty_cases_give_the_synapse_split(tmp_path, caplog):
    root = touch_cases(tmp_path, TRAIN + TEST + [41])
    with caplog.at_level(logging.WARNING, logger="medseg.data.btcv"):
        train = btcv_datalist(root, "train", val_fraction=0)  # no validation hold-out: the 18 training cases
    assert names(train) == case_names(TRAIN)
    assert names(btcv_datalist(root, "test")) == case_names(TEST)
    assert train[0]["image"] == str(root / "RawData/Training/img/img0005.nii.gz")
    assert train[0]["label"] == str(root / "RawData/Training/label/label0005.nii.gz")
    assert "[41] are outside the Synapse split" in caplog.text
    assert len(btcv_datalist(root, "all")) == 31


def test_validation_cases_are_carved_from_the_training_cases(tmp_path):
    root = touch_cases(tmp_path, TRAIN + TEST)
    val = names(btcv_datalist(root, "val"))
    assert val == case_names(seeded_holdout(TRAIN)) and len(val) == 4  # round(0.2 · 18)
    assert names(btcv_datalist(root, "train")) == case_names(set(TRAIN) - set(seeded_holdout(TRAIN)))
    assert names(btcv_datalist(root, "val", val_fraction=0.5, val_seed=7)) == case_names(seeded_holdout(TRAIN, 0.5, 7))
    with pytest.raises(ValueError, match="no validation split with val_fraction=0"):
        btcv_datalist(root, "val", val_fraction=0)
    with pytest.raises(ValueError, match="split must be 'train', 'val', 'test' or 'all'"):
        btcv_datalist(root, "validation")


def datalist_entry(case_id: int) -> dict[str, str]:
    img, label = f"img{case_id:04d}.nii.gz", f"label{case_id:04d}.nii.gz"
    return {"image": f"RawData/Training/img/{img}", "label": f"RawData/Training/label/{label}"}


def test_monai_tutorial_datalist_puts_no_test_case_into_validation(tmp_path):
    # MONAI's BTCV tutorial dataset_0.json: 24 training cases (test cases 1-4, 8, 22, ... among them) and
    # validation 35-40 (test cases 35, 36, 38 among them); its sections only list the cases
    root = touch_cases(tmp_path, TRAIN + TEST)
    sections = {"training": [*range(1, 11), *range(21, 35)], "validation": list(range(35, 41))}
    datalist = {section: [datalist_entry(c) for c in ids] for section, ids in sections.items()}
    (root / "dataset_0.json").write_text(json.dumps(datalist))
    split = {s: set(names(btcv_datalist(root, s))) for s in ("train", "val", "test")}
    assert split["test"] == set(case_names(TEST))
    assert split["val"] == set(case_names(seeded_holdout(TRAIN))) and split["train"] | split["val"] == set(
        case_names(TRAIN)
    )
    assert not split["val"] & split["test"] and not split["train"] & split["test"] and not split["train"] & split["val"]


@pytest.mark.parametrize("case_ids", [[1, 2, 5, 6, 7], [101, 102, 103, 104]], ids=["subset", "other numbering"])
def test_missing_standard_cases_fall_back_to_the_seeded_ratio_split(tmp_path, caplog, case_ids):
    root = touch_cases(tmp_path, case_ids)
    # the documented rule: permute the sorted cases with default_rng(1234), the first round(0.4 n) are test
    order = [sorted(case_ids)[i] for i in np.random.default_rng(1234).permutation(len(case_ids))]
    n_test = round(0.4 * len(case_ids))
    with caplog.at_level(logging.WARNING, logger="medseg.data.btcv"):
        test = btcv_datalist(root, "test")
    assert names(test) == case_names(order[:n_test])
    assert names(btcv_datalist(root, "train", val_fraction=0)) == case_names(order[n_test:])
    val = seeded_holdout(order[n_test:])  # carved from the training cases only
    assert names(btcv_datalist(root, "val")) == case_names(val) and len(val) == 1
    assert names(btcv_datalist(root, "train")) == case_names(set(order[n_test:]) - set(val))
    assert "lacks" in caplog.text and "seeded split" in caplog.text and "seed 1234" in caplog.text
    other_seed = btcv_datalist(root, "test", seed=0)
    assert len(other_seed) == n_test


def test_the_datalist_json_is_used_when_present(btcv_root, tmp_path):
    root = copy_dataset(btcv_root, tmp_path / "btcv")
    written = json.loads((root / "dataset_0.json").read_text())
    assert len(written["training"]) == 3 and len(written["validation"]) == 2
    written["training"] = written["training"][:1]
    (root / "dataset_0.json").write_text(json.dumps(written))
    assert sorted(btcv_cases(root)) == [1, 2, 5]  # one training entry and the two validation entries
    assert sorted(btcv_cases(root, datalist_json=None)) == [1, 2, 5, 6, 7]  # folder scan
    written["validation"].append({"image": "RawData/Training/img/img0009.nii.gz", "label": "x/label0009.nii.gz"})
    (root / "dataset_0.json").write_text(json.dumps(written))
    with pytest.raises(FileNotFoundError, match=re.escape("img0009.nii.gz")):
        btcv_cases(root)
    (root / "dataset_0.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape("dataset_0.json is not valid JSON")):
        btcv_cases(root)


def test_an_image_without_label_is_named(btcv_root, tmp_path):
    root = copy_dataset(btcv_root, tmp_path / "btcv")
    (root / "dataset_0.json").unlink()
    (root / "RawData/Training/label/label0006.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("label0006.nii.gz")):
        btcv_datalist(root, "train")
    (root / "RawData/Training/img/img0006.nii.gz").unlink()
    (root / "RawData/Training/img/img0007.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("img0007.nii.gz")):
        btcv_datalist(root, "train")


def test_spacing_is_read_from_the_files(btcv_root):
    item = btcv_datalist(btcv_root, "all")[0]
    spacing = sitk.ReadImage(item["image"]).GetSpacing()  # an independent reader
    assert spacing[2] > 2.5 * spacing[0], "anisotropic voxels"
    loaded = ReadImaged(["image", "label"], reader="NibabelReader", ensure_channel_first=True)(item)
    for key in ("image", "label"):
        assert isinstance(loaded[key], MetaTensor) and loaded[key].shape[0] == 1
        np.testing.assert_allclose(loaded[key].pixdim.numpy(), spacing, rtol=1e-5)
        assert loaded[key].meta["filename_or_obj"] == item[key]


def test_btcv_labels_become_the_eight_synapse_organs(tmp_path):
    # one voxel of each BTCV value 0..13 along x; by the default mapping 6 liver -> 5, 7 stomach -> 6,
    # 8 aorta -> 7, 11 pancreas -> 8, and esophagus (5), veins (9, 10), adrenal glands (12, 13) -> 0
    label = np.arange(14, dtype=np.uint8).reshape(14, 1, 1)
    image = np.full((14, 1, 1), 100, dtype=np.int16)  # inside the HU window everywhere: nothing cropped
    item = {
        "image": str(write_nifti(tmp_path / "img0001.nii.gz", image)),
        "label": str(write_nifti(tmp_path / "label0001.nii.gz", label)),
    }
    out = btcv_transforms(train=False, pixdim=(1.0, 1.0, 1.0))(item)
    assert out["label"].flatten().tolist() == [0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0]
    np.testing.assert_allclose(out["image"].flatten().numpy(), (100 + 175) / 425)  # window -175..250 -> [0, 1]
    kept = btcv_transforms(train=False, mapping=None, pixdim=(1.0, 1.0, 1.0))(item)
    assert kept["label"].flatten().tolist() == list(range(14))


def test_unknown_label_values_are_named(tmp_path):
    label = np.zeros((4, 4, 2), dtype=np.uint8)
    label[0, 0, 0] = 14
    item = {
        "image": str(write_nifti(tmp_path / "img0001.nii.gz", np.zeros((4, 4, 2), np.int16))),
        "label": str(write_nifti(tmp_path / "label0001.nii.gz", label)),
    }
    with raises_naming(ValueError, "label0001.nii.gz holds unknown values [14]"):
        btcv_transforms(train=False, pixdim=(1.0, 1.0, 1.0))(item)


def test_truncated_or_corrupt_nifti_is_named(btcv_root, tmp_path):
    root = copy_dataset(btcv_root, tmp_path / "btcv")
    item = btcv_datalist(root, "all")[0]
    image = Path(item["image"])
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with raises_naming(ValueError, f"cannot read image file {image}"):
        btcv_transforms(train=False)(item)
    image.write_bytes(b"\x00" * 64)
    with raises_naming(ValueError, f"cannot read image file {image}"):
        btcv_transforms(train=False)(item)
    image.unlink()
    with raises_naming(FileNotFoundError, f"image file does not exist: {image}"):
        btcv_transforms(train=False)(item)


def test_transforms_orient_resample_and_keep_organ_volumes(btcv_root):
    item = next(i for i in btcv_datalist(btcv_root, "all") if i["name"] == "case0001")
    raw = nib.load(item["label"])
    raw_label = np.asarray(raw.dataobj)
    zooms = np.asarray(raw.header.get_zooms(), dtype=float)
    pixdim = tuple(zooms * 0.5)
    out = btcv_transforms(train=False, pixdim=pixdim)(item)
    label = out["label"][0].numpy()
    assert set(np.unique(label).tolist()) <= set(range(9))
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    # the liver's volume in mm3 survives resampling to half the spacing (nearest neighbour); small organs
    # spanning 3-4 thick slices at this size would not (half a voxel is lost at each end of each axis)
    before = (raw_label == 6).sum() * zooms.prod()
    after = (label == 5).sum() * np.prod(pixdim)
    assert after == pytest.approx(before, rel=0.1)
    assert all((label == organ).any() for organ in range(1, 9))
    # RAS: x grows to the patient's right (liver, 5) from the left (spleen, 1); y grows to anterior
    centroid = {k: np.argwhere(label == k).mean(axis=0) for k in (1, 2, 5)}
    assert centroid[5][0] > centroid[1][0]
    assert centroid[5][1] > centroid[2][1], "liver in front of the right kidney"


@pytest.mark.parametrize("augmentation", ["monai", "nnunet", "none"])
def test_training_transforms_sample_patches(btcv_root, augmentation):
    item = btcv_datalist(btcv_root, "train")[0]
    chain = btcv_transforms(
        train=True, pixdim=(12.0, 12.0, 30.0), roi_size=(16, 16, 8), num_samples=2, augmentation=augmentation
    )
    chain.set_random_state(0)
    patches = chain(item)
    assert len(patches) == 2
    for patch in patches:
        assert patch["image"].shape == patch["label"].shape == (1, 16, 16, 8)
        assert isinstance(patch["label"], torch.Tensor)
        assert set(torch.unique(patch["label"]).tolist()) <= set(range(9))
    with pytest.raises(ValueError, match="augmentation must be"):
        btcv_transforms(train=True, augmentation="heavy")


def aligned_pair(tmp_path: Path, affine: np.ndarray, shape=(8, 6, 4)) -> dict[str, str]:
    image = np.full(shape, 100, dtype=np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    label[2:5, 2:4, 1:3] = 6
    paths = {"image": tmp_path / "img0001.nii.gz", "label": tmp_path / "label0001.nii.gz"}
    nib.save(nib.Nifti1Image(image, affine), paths["image"])
    nib.save(nib.Nifti1Image(label, affine), paths["label"])
    return {key: str(path) for key, path in paths.items()}


LPS_AFFINE = np.array([[-0.8, 0, 0, 120.0], [0, -0.8, 0, 90.0], [0, 0, 3.0, -200.0], [0, 0, 0, 1]])


def test_a_label_shorter_than_its_image_is_refused_naming_both_files(tmp_path):
    item = aligned_pair(tmp_path, LPS_AFFINE)
    label = nib.load(item["label"])
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:, :, :-1], LPS_AFFINE), item["label"])  # 4 -> 3 slices
    with raises_naming(ValueError, item["image"], item["label"], "spatial shapes (8, 6, 4) and (8, 6, 3) differ"):
        btcv_transforms(train=True, pixdim=(1.0, 1.0, 1.0), roi_size=(4, 4, 2), num_samples=1)(item)


@pytest.mark.parametrize("change", ["origin 100 mm off", "flipped direction", "other spacing"])
def test_a_label_on_another_grid_is_refused_before_resampling(tmp_path, change):
    item = aligned_pair(tmp_path, LPS_AFFINE)
    moved = LPS_AFFINE.copy()
    if change == "origin 100 mm off":
        moved[0, 3] += 100.0
    elif change == "flipped direction":
        moved[:, 0] *= -1  # same voxel size, x runs the other way: the anatomy is mirrored
    else:
        moved[2, 2] = 2.5
    label = nib.load(item["label"])
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), moved), item["label"])
    with raises_naming(ValueError, item["image"], item["label"], "not on one voxel grid: their affines place a voxel"):
        btcv_transforms(train=False, pixdim=(1.0, 1.0, 1.0))(item)


def test_float_rounding_of_the_header_is_tolerated(tmp_path):
    item = aligned_pair(tmp_path, LPS_AFFINE)
    rounded = LPS_AFFINE + 1e-5  # float32 headers round a 120 mm origin to about 1e-5 mm
    label = nib.load(item["label"])
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), rounded), item["label"])
    out = btcv_transforms(train=False, pixdim=(0.8, 0.8, 3.0))(item)
    assert int((out["label"] == 5).sum()) == 3 * 2 * 2  # the liver box, label 6 -> Synapse 5
