"""User datasets: nnU-Net v2 raw and MSD folders are read, checked and split; errors name the file and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.data.image_files import load_image, read_geometry, write_label_map
from medseg.data.synthetic_mri import make_msd, make_nnunet
from medseg.data.user_dataset import check_case, read_user_dataset, user_datalist

from ._helpers import raises_naming


@pytest.fixture(scope="module")
def nnunet_root(tmp_path_factory) -> Path:
    """nnU-Net v2 raw, two channels (T2, ADC), 3 classes, 6 training and 2 labelled test cases."""
    return make_nnunet(tmp_path_factory.mktemp("nnunet"), cases=6, size=24, channels=("T2", "ADC"), seed=1)


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory) -> Path:
    """MSD with 4 channels in one 4D NIfTI per case."""
    return make_msd(tmp_path_factory.mktemp("msd"), cases=5, size=24, channels=("FLAIR", "T1", "T2", "ADC"), seed=2)


def copy_of(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


def edit_json(root: Path, **changes) -> Path:
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path.write_text(json.dumps(data))
    return path


# --- reading both layouts ----------------------------------------------------------------------------------------


def test_nnunet_folder_gives_channel_files_in_order_and_labelled_test_cases(nnunet_root):
    dataset = read_user_dataset(nnunet_root)
    assert dataset.layout == "nnunet"
    assert dataset.channel_names == ("T2", "ADC")
    assert dataset.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert dataset.num_classes == 3 and dataset.file_ending == ".nii.gz"
    assert sorted(dataset.training) == [f"mri_{i:03d}" for i in range(6)]
    case = dataset.training["mri_002"]
    assert [p.name for p in case.images] == ["mri_002_0000.nii.gz", "mri_002_0001.nii.gz"]
    assert case.label == nnunet_root / "labelsTr" / "mri_002.nii.gz"
    assert sorted(dataset.labelled_test) == ["mri_006", "mri_007"]


def test_msd_folder_reads_relative_paths_and_a_4d_image_as_four_channels(msd_root):
    dataset = read_user_dataset(msd_root)
    assert dataset.layout == "msd" and dataset.channel_names == ("FLAIR", "T1", "T2", "ADC")
    case = dataset.training["mri_001"]
    assert case.images == ((msd_root / "imagesTr" / "mri_001.nii.gz").resolve(),)
    geometry = check_case(case, dataset)
    reference = nib.load(case.images[0])
    assert geometry.channels == 4 and geometry.shape == reference.shape[:3]
    image = load_image(case.images[0])
    assert image.shape == (4, *reference.shape[:3])
    assert np.allclose(image.numpy(), np.moveaxis(np.asarray(reference.dataobj), -1, 0))


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_simpleitk_formats_read_like_nibabel_reads_the_same_volume(tmp_path, ending):
    volume = np.random.default_rng(0).random((7, 6, 5)).astype(np.float32)  # SimpleITK order (z, y, x)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.7, 0.8, 3.0))
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / f"x{ending}"))
    sitk.WriteImage(image, str(tmp_path / "x.nii.gz"))
    ours, nifti = load_image(tmp_path / f"x{ending}"), nib.load(tmp_path / "x.nii.gz")
    assert np.array_equal(ours[0].numpy(), volume.transpose(2, 1, 0))
    assert np.allclose(ours.affine.numpy(), nifti.affine, atol=1e-5)  # nibabel's RAS affine of the same image
    assert np.allclose(read_geometry(tmp_path / f"x{ending}").affine, nifti.affine, atol=1e-5)


def test_2d_png_dataset_is_read_as_2d(tmp_path):
    root = make_nnunet(tmp_path / "png", cases=3, test_cases=0, size=32, file_ending=".png", spatial_dims=2)
    dataset = read_user_dataset(root)
    case = dataset.training["mri_000"]
    geometry = check_case(case, dataset)
    assert len(geometry.shape) == 2 and geometry.channels == 1
    assert load_image(case.images[0]).shape == (1, *geometry.shape)


@pytest.mark.parametrize(("ending", "dims"), [(".nii.gz", 3), (".nii.gz", 2), (".nrrd", 3), (".png", 2)])
def test_written_prediction_has_the_reference_geometry(tmp_path, ending, dims):
    root = make_nnunet(tmp_path / "d", cases=2, test_cases=0, size=16, file_ending=ending, spatial_dims=dims)
    reference = root / "imagesTr" / f"mri_000_0000{ending}"
    labels = (load_image(root / "labelsTr" / f"mri_000{ending}")[0].numpy()).astype(np.uint8)
    out = write_label_map(labels, reference, tmp_path / "pred" / f"mri_000{ending}")
    written, ref = sitk.ReadImage(str(out)), sitk.ReadImage(str(reference))
    assert written.GetSize() == ref.GetSize()
    assert np.allclose(written.GetSpacing(), ref.GetSpacing()) and np.allclose(written.GetOrigin(), ref.GetOrigin())
    assert np.allclose(written.GetDirection(), ref.GetDirection())
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / f"mri_000{ending}")))
    assert np.array_equal(sitk.GetArrayFromImage(written), truth)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left behind


def test_prediction_off_the_reference_grid_is_refused(tmp_path, nnunet_root):
    reference = nnunet_root / "imagesTr" / "mri_000_0000.nii.gz"
    with raises_naming(ValueError, "was not brought back to the input's grid", str(reference)):
        write_label_map(np.zeros((3, 3, 3), np.uint8), reference, tmp_path / "mri_000.nii.gz")


# --- splits -------------------------------------------------------------------------------------------------------


def test_validation_split_and_folds_come_from_training_cases_only(nnunet_root):
    train = {d["name"] for d in user_datalist(nnunet_root, "train")}
    val = {d["name"] for d in user_datalist(nnunet_root, "val")}
    test = {d["name"] for d in user_datalist(nnunet_root, "test")}
    assert train | val == {f"mri_{i:03d}" for i in range(6)} and not train & val
    assert test == {"mri_006", "mri_007"}
    folds = [{d["name"] for d in user_datalist(nnunet_root, "val", fold=k, n_folds=3)} for k in range(3)]
    assert set().union(*folds) == train | val and sum(map(len, folds)) == 6


def test_held_out_test_cases_never_enter_training_or_validation(nnunet_root):
    held = {d["name"] for d in user_datalist(nnunet_root, "test", test_fraction=0.34)}
    used = {d["name"] for s in ("train", "val") for d in user_datalist(nnunet_root, s, test_fraction=0.34)}
    assert len(held) == 2 and not held & used and len(used) == 4


def test_no_labelled_test_cases_is_a_clear_error(tmp_path):
    root = make_nnunet(tmp_path / "d", cases=2, test_cases=1, size=16, test_labels=False)
    with raises_naming(ValueError, "no labelled test cases", "test_fraction"):
        user_datalist(root, "test")
    assert [d["name"] for d in user_datalist(root, "test_all")] == ["mri_002"]
    assert "label" not in user_datalist(root, "test_all")[0]


# --- errors name the file and the field ---------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["file_ending", "channel_names", "labels", "numTraining"])
def test_missing_nnunet_field_is_named(tmp_path, nnunet_root, missing):
    root = copy_of(nnunet_root, tmp_path)
    path = edit_json(root, **{missing: None})
    with raises_naming(ValueError, str(path), repr(missing)):
        read_user_dataset(root)


def test_missing_msd_field_is_named(tmp_path, msd_root):
    root = copy_of(msd_root, tmp_path)
    path = edit_json(root, modality=None)
    with raises_naming(ValueError, str(path), "'modality'"):
        read_user_dataset(root)


def test_extra_channel_file_is_named_with_channel_names(tmp_path, nnunet_root):
    root = copy_of(nnunet_root, tmp_path)
    shutil.copy(root / "imagesTr" / "mri_001_0001.nii.gz", root / "imagesTr" / "mri_001_0002.nii.gz")
    with raises_naming(ValueError, "mri_001", "'channel_names'", "_0001"):
        read_user_dataset(root)


def test_4d_image_with_another_channel_count_than_modality_is_named(tmp_path, msd_root):
    root = copy_of(msd_root, tmp_path)
    edit_json(root, modality={"0": "FLAIR", "1": "T1", "2": "T2"})
    dataset = read_user_dataset(root)
    case = dataset.training["mri_000"]
    with raises_naming(ValueError, str(case.images[0]), "4 channel(s)", "'modality'", "lists 3"):
        check_case(case, dataset)


def test_region_labels_are_refused_clearly(tmp_path, nnunet_root):
    root = copy_of(nnunet_root, tmp_path)
    edit_json(root, labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
    with raises_naming(ValueError, "'labels'", "regions", "not supported"):
        read_user_dataset(root)


def test_non_consecutive_labels_are_refused(tmp_path, msd_root):
    root = copy_of(msd_root, tmp_path)
    path = edit_json(root, labels={"0": "background", "2": "lesion"})
    with raises_naming(ValueError, str(path), "consecutive"):
        read_user_dataset(root)


def test_num_training_mismatch_is_named(tmp_path, nnunet_root):
    root = copy_of(nnunet_root, tmp_path)
    path = edit_json(root, numTraining=9)
    with raises_naming(ValueError, str(path), "'numTraining'", "6 training cases"):
        read_user_dataset(root)


def test_missing_label_file_is_named(tmp_path, nnunet_root):
    root = copy_of(nnunet_root, tmp_path)
    (root / "labelsTr" / "mri_003.nii.gz").unlink()
    with raises_naming(FileNotFoundError, str(root / "labelsTr" / "mri_003.nii.gz")):
        read_user_dataset(root)


def test_label_with_another_shape_is_named(tmp_path, nnunet_root):
    root = copy_of(nnunet_root, tmp_path)
    label = root / "labelsTr" / "mri_004.nii.gz"
    image = nib.load(label)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:-1], image.affine), label)
    dataset = read_user_dataset(root)
    with raises_naming(ValueError, str(label), "shape"):
        check_case(dataset.training["mri_004"], dataset)


def test_label_with_another_affine_is_named(tmp_path, nnunet_root):
    root = copy_of(nnunet_root, tmp_path)
    label = root / "labelsTr" / "mri_004.nii.gz"
    image = nib.load(label)
    shifted = image.affine.copy()
    shifted[0, 3] += 2.0  # 2 mm off
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), shifted), label)
    dataset = read_user_dataset(root)
    with raises_naming(ValueError, str(label), "affine"):
        check_case(dataset.training["mri_004"], dataset)


def test_wrongly_named_image_file_is_named(tmp_path, nnunet_root):
    root = copy_of(nnunet_root, tmp_path)
    shutil.copy(root / "imagesTr" / "mri_001_0000.nii.gz", root / "imagesTr" / "stray.nii.gz")
    with raises_naming(ValueError, "stray.nii.gz", "_<XXXX>"):
        read_user_dataset(root)


def test_folder_without_dataset_json_says_which_layouts_are_read(tmp_path):
    with raises_naming(FileNotFoundError, "no dataset.json", "nnU-Net v2", "Decathlon"):
        read_user_dataset(tmp_path)


# --- synthetic data --------------------------------------------------------------------------------------------


def test_synthetic_mri_is_deterministic_and_not_ct_like(tmp_path):
    a = make_nnunet(tmp_path / "a", cases=2, test_cases=0, size=24, classes=4, seed=5)
    b = make_nnunet(tmp_path / "b", cases=2, test_cases=0, size=24, classes=4, seed=5)
    for name in ("imagesTr/mri_001_0000.nii.gz", "labelsTr/mri_001.nii.gz"):
        assert np.array_equal(np.asarray(nib.load(a / name).dataobj), np.asarray(nib.load(b / name).dataobj))
    image = np.asarray(nib.load(a / "imagesTr/mri_001_0000.nii.gz").dataobj)
    labels = np.asarray(nib.load(a / "labelsTr/mri_001.nii.gz").dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert image.min() > 0 and image.max() < 5000  # magnitude MRI: no negative (air) values as in CT
    zooms = nib.load(a / "labelsTr/mri_001.nii.gz").header.get_zooms()
    assert zooms[2] > 2 * zooms[0]  # anisotropic slices


def test_rgb_png_holds_three_channels_in_one_file(tmp_path):
    from PIL import Image

    root = make_nnunet(tmp_path / "d", cases=2, test_cases=0, size=24, file_ending=".png", spatial_dims=2)
    for path in (root / "imagesTr").glob("*.png"):
        grey = np.asarray(Image.open(path))
        Image.fromarray(np.stack([grey, grey // 2, 255 - grey], axis=-1), mode="RGB").save(path)
    data = json.loads((root / "dataset.json").read_text())
    data["channel_names"] = {"0": "R", "1": "G", "2": "B"}
    (root / "dataset.json").write_text(json.dumps(data))
    dataset = read_user_dataset(root)
    case = dataset.training["mri_000"]
    assert check_case(case, dataset).channels == 3
    image = load_image(case.images[0])
    rgb = np.asarray(Image.open(case.images[0]))  # (rows, columns, 3)
    assert image.shape == (3, rgb.shape[1], rgb.shape[0])
    assert np.array_equal(image[2].numpy().T, rgb[..., 2])


def test_label_values_given_as_digit_strings_are_read(tmp_path, nnunet_root):
    root = copy_of(nnunet_root, tmp_path)
    edit_json(root, labels={"background": "0", "organ": "1", "lesion": "2"})
    assert read_user_dataset(root).labels == {0: "background", 1: "organ", 2: "lesion"}
