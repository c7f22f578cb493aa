"""Synthetic data: deterministic, in the exact layouts, with plausible anatomy and street scenes."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg.data import SYNAPSE_TEST_CASES, SYNAPSE_TRAIN_CASES, make_cityscapes, make_synapse
from medseg.data.synthetic import main, synthetic_abdomen

from .conftest import SIZE

REPO = Path(__file__).resolve().parents[2]
# BTCV label -> Synapse label, written out from the data note (not imported from medseg)
BTCV_TO_SYNAPSE = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}


def nifti_arrays(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    files = sorted((root / "RawData" / "Training").rglob("*.nii.gz"))
    return {f.name: (np.asarray(nib.load(f).dataobj), nib.load(f).affine) for f in files}


def test_same_seed_writes_the_same_volumes_and_another_seed_does_not(tmp_path):
    first = nifti_arrays(make_synapse(tmp_path / "a", "btcv", cases=2, size=20, seed=7))
    again = nifti_arrays(make_synapse(tmp_path / "b", "btcv", cases=2, size=20, seed=7))
    other = nifti_arrays(make_synapse(tmp_path / "c", "btcv", cases=2, size=20, seed=8))
    assert sorted(first) == ["img0001.nii.gz", "img0005.nii.gz", "label0001.nii.gz", "label0005.nii.gz"]
    for name, (array, affine) in first.items():
        np.testing.assert_array_equal(array, again[name][0])
        np.testing.assert_array_equal(affine, again[name][1])
    assert not np.array_equal(first["img0001.nii.gz"][0], other["img0001.nii.gz"][0])


def test_transunet_layout_files_and_lists(transunet_root):
    # 5 cases in the protocol's 18:12 ratio: round(5 * 12 / 30) = 2 test cases, 3 train cases
    train_ids, test_ids = SYNAPSE_TRAIN_CASES[:3], SYNAPSE_TEST_CASES[:2]
    lists = transunet_root / "lists" / "lists_Synapse"
    train_names = lists.joinpath("train.txt").read_text().split()
    assert lists.joinpath("test_vol.txt").read_text().split() == [f"case{c:04d}" for c in test_ids]
    assert sorted(p.stem for p in (transunet_root / "train_npz").iterdir()) == sorted(train_names)
    assert {n.split("_")[0] for n in train_names} == {f"case{c:04d}" for c in train_ids}
    assert all(len(n) == len("case0005_slice000") for n in train_names)
    assert sorted(p.name for p in (transunet_root / "test_vol_h5").iterdir()) == ["case0001.npy.h5", "case0002.npy.h5"]
    with np.load(transunet_root / "train_npz" / f"{train_names[0]}.npz") as one_slice:
        assert sorted(one_slice.files) == ["image", "label"]
        assert one_slice["image"].shape == one_slice["label"].shape == (SIZE, SIZE)
        assert 0.0 <= one_slice["image"].min() and one_slice["image"].max() <= 1.0
    with h5py.File(transunet_root / "test_vol_h5" / "case0001.npy.h5") as volume:
        assert sorted(volume.keys()) == ["image", "label"]
        image, label = volume["image"][()], volume["label"][()]
    assert image.shape == label.shape and image.shape[1:] == (SIZE, SIZE) and image.dtype == np.float32
    assert set(np.unique(label).tolist()) <= set(range(9))


def test_transunet_files_are_the_btcv_volumes_preprocessed(transunet_root, btcv_root):
    # same seed and case number: the TransUNet volume is HU clipped to [-125, 275] then (x + 125) / 400,
    # with the BTCV labels mapped to Synapse labels, and NIfTI (x, y, z) axes turned to (z, y, x)
    hu = np.asarray(nib.load(btcv_root / "RawData/Training/img/img0002.nii.gz").dataobj).transpose(2, 1, 0)
    btcv_label = np.asarray(nib.load(btcv_root / "RawData/Training/label/label0002.nii.gz").dataobj).transpose(2, 1, 0)
    expected_image = (np.clip(hu.astype(np.float64), -125, 275) + 125) / 400
    expected_label = np.zeros(btcv_label.shape)
    for source, target in BTCV_TO_SYNAPSE.items():
        expected_label[btcv_label == source] = target
    with h5py.File(transunet_root / "test_vol_h5" / "case0002.npy.h5") as volume:
        np.testing.assert_allclose(volume["image"][()], expected_image, atol=1e-6)
        np.testing.assert_array_equal(volume["label"][()], expected_label)


@pytest.mark.parametrize("seed", [0, 1])
def test_abdomen_anatomy_is_plausible(seed):
    hu, labels, (sx, sy, sz) = synthetic_abdomen(64, np.random.default_rng(seed))
    depth = hu.shape[0]
    assert sx == sy and 3.0 <= sz / sx <= 5.0 + 1e-9, "anisotropic: slices 3-5 times the in-plane spacing"
    assert 340 / 64 <= sx <= 420 / 64
    millilitres = {k: (labels == k).sum() * sx * sy * sz / 1000 for k in range(1, 14)}
    assert all(v > 0 for v in millilitres.values()), millilitres
    assert max(millilitres, key=millilitres.get) == 6, "liver is the largest organ"
    assert 800 < millilitres[6] < 3500
    for small in (4, 11, 12, 13):  # gallbladder, pancreas, adrenal glands
        assert millilitres[small] < millilitres[6] / 8
    assert millilitres[12] < millilitres[2] / 5 and millilitres[13] < millilitres[3] / 5
    aorta_slices = (labels == 8).any(axis=(1, 2))
    assert aorta_slices.mean() >= 0.9, "aorta runs through the whole volume"
    aorta_area_cm2 = (labels == 8).sum(axis=(1, 2))[aorta_slices].mean() * sx * sy / 100
    assert 1.5 < aorta_area_cm2 < 7, "aorta is thin"
    centre = (hu.shape[2] - 1) / 2
    columns = {k: np.nonzero(labels == k)[2].mean() for k in (1, 6)}
    assert columns[6] < centre < columns[1], "liver on the patient's right (image left), spleen on the left"
    rows = {k: np.nonzero(labels == k)[1].mean() for k in (2, 3, 6)}
    assert rows[2] > rows[6] and rows[3] > rows[6], "kidneys behind the liver"
    assert hu[:, :2, :2].mean() < -900, "air outside the body"
    assert 60 < hu[labels == 6].mean() < 130 and 120 < hu[labels == 8].mean() < 240
    assert 5 < hu[labels == 0][hu[labels == 0] > -50].std() < 200, "noise and texture"
    assert depth >= 8


def test_cityscapes_layout_and_scene_content(cityscapes_root):
    images = sorted((cityscapes_root / "leftImg8bit").rglob("*.png"))
    # 6 cases: round(6 * 500 / 3475) = 1 val image, 5 train, as many unlabelled test images as val ones
    counts = {s: len(list((cityscapes_root / "leftImg8bit" / s).rglob("*.png"))) for s in ("train", "val", "test")}
    assert counts == {"train": 5, "val": 1, "test": 1}
    seen: set[int] = set()
    for image in images:
        split, city = image.parts[-3], image.parts[-2]
        assert image.name.startswith(f"{city}_") and image.name.endswith("_000019_leftImg8bit.png")
        rgb = np.asarray(Image.open(image))
        assert rgb.shape == (32, 64, 3) and rgb.dtype == np.uint8
        stem = image.name[: -len("_leftImg8bit.png")]
        label_path = cityscapes_root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        if split == "test":
            assert not label_path.exists()
            continue
        label = np.asarray(Image.open(label_path))
        assert label.shape == (32, 64) and label.dtype == np.uint8
        colour = np.asarray(Image.open(label_path.with_name(f"{stem}_gtFine_color.png")))
        # official colours: road (128, 64, 128), sky (70, 130, 180)
        for label_id, rgb_expected in ((7, (128, 64, 128)), (23, (70, 130, 180))):
            if (label == label_id).any():
                assert (colour[label == label_id] == rgb_expected).all()
        seen |= set(np.unique(label).tolist())
    # road, sidewalk, building, pole, vegetation, sky, person, car; ego vehicle, rectification border, static
    assert {7, 8, 11, 17, 21, 23, 24, 26} <= seen and {1, 2, 4} <= seen
    assert seen <= set(range(34))


def test_cityscapes_train_ids_files_follow_the_official_mapping(tmp_path):
    root = make_cityscapes(tmp_path, cases=2, size=64, seed=1, train_ids=True)
    label_path = next((root / "gtFine" / "train").rglob("*_labelIds.png"))
    label_ids = np.asarray(Image.open(label_path))
    train_ids = np.asarray(Image.open(str(label_path).replace("_labelIds", "_labelTrainIds")))
    official = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12}
    official |= {26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for label_id in np.unique(label_ids):
        assert (train_ids[label_ids == label_id] == official.get(int(label_id), 255)).all()


def test_command_line_and_script_write_the_same_as_the_library(tmp_path, monkeypatch):
    assert main(["--dataset", "synapse", "--layout", "btcv", "--cases", "2", "--size", "20", "--seed", "4",
                 "--out", str(tmp_path / "cli")]) == 0  # fmt: skip
    library = nifti_arrays(make_synapse(tmp_path / "lib", "btcv", cases=2, size=20, seed=4))
    from_cli = nifti_arrays(tmp_path / "cli")
    assert sorted(library) == sorted(from_cli)
    for name in library:
        np.testing.assert_array_equal(library[name][0], from_cli[name][0])
    out = tmp_path / "script"
    argv = ["make_synthetic_data.py", "--dataset", "cityscapes", "--cases", "2", "--size", "64", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "scripts" / "make_synthetic_data.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert len(list((out / "gtFine").rglob("*_gtFine_labelIds.png"))) == 2


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"cases must be in 1\.\.30"):
        make_synapse("/nonexistent", "transunet", cases=31)
    with pytest.raises(ValueError, match="layout"):
        make_synapse("/nonexistent", "nnunet", cases=2)
    with pytest.raises(ValueError, match="at least 16"):
        synthetic_abdomen(8, np.random.default_rng(0))
