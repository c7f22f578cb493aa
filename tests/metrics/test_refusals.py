"""Evaluation refuses what it cannot score correctly, naming the case, the file and the fix (issue 9, items 2-4)."""

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.metrics.evaluate import evaluate_folders, main, read_label_image

LABELS = {1: "liver", 2: "spleen"}


def write(
    path: Path,
    array: np.ndarray,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
    origin: tuple[float, ...] = (0.0, 0.0, 0.0),
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> Path:
    """Write ``array`` (SimpleITK order z, y, x) with the grid given in SimpleITK's terms (x first, LPS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def organs(shape: tuple[int, int, int] = (8, 10, 12)) -> np.ndarray:
    """Liver (1) and spleen (2) blocks in a small volume."""
    volume = np.zeros(shape, dtype=np.uint8)
    volume[2:6, 2:6, 2:6] = 1
    volume[1:4, 6:9, 7:11] = 2
    return volume


@pytest.fixture
def folders(tmp_path):
    """Cases a and b: prediction = reference (Dice 1 for both organs)."""
    for case in ("a", "b"):
        write(tmp_path / "pred" / f"{case}.nii.gz", organs())
        write(tmp_path / "ref" / f"{case}.nii.gz", organs())
    return tmp_path / "pred", tmp_path / "ref"


def evaluate(folders, labels=LABELS, **kwargs):
    return evaluate_folders(*folders, labels, progress=False, **kwargs)


# item 2: label values outside the label map, absent structures, NaN


@pytest.mark.parametrize(
    ("kind", "value", "dtype"), [("pred", 5, np.uint8), ("ref", 9, np.uint8), ("ref", -1, np.int16)]
)
def test_label_values_outside_the_label_map_are_refused(folders, kind, value, dtype):
    volume = organs().astype(dtype)
    volume[0, 0, 0] = value
    write(folders[0 if kind == "pred" else 1] / "b.nii.gz", volume)
    with pytest.raises(ValueError, match=rf"case 'b'.*b\.nii\.gz holds label values {value} .*--ignore-labels"):
        evaluate(folders)


def test_ignored_reference_voxels_are_left_out_and_ignored_prediction_voxels_are_background(folders):
    ref = organs()
    ref[6:8, 2:6, 2:6] = 255  # a void slab next to the liver (32 voxels)
    pred = organs()
    pred[6:8, 2:6, 2:6] = 1  # the prediction grows the liver into the void: not counted
    pred[2, 2, 2] = 255  # one liver voxel predicted as void: background, a miss
    write(folders[1] / "b.nii.gz", ref)
    write(folders[0] / "b.nii.gz", pred)
    with pytest.raises(ValueError, match="holds label values 255"):
        evaluate(folders)
    table = evaluate(folders, ignore_labels=[255]).table
    liver = table[(table.case == "b") & (table.structure == "liver")].iloc[0]
    assert liver.dice == 2 * 63 / (63 + 64)  # by hand: 64 reference voxels, 63 predicted, all inside
    assert liver.volume_pred_ml == pytest.approx(63 / 1000)


def test_a_structure_absent_everywhere_is_not_scored_and_leaves_the_mean_alone(folders):
    labels = {**LABELS, 3: "kidney"}  # no kidney in any prediction or reference
    evaluation = evaluate(folders, labels)
    summary = evaluation.summary
    assert np.isnan(evaluation.table[evaluation.table.structure == "kidney"].dice).all()
    assert summary["per_structure"]["kidney"]["dice"]["n"] == 0
    assert summary["overall"]["dice"]["mean"] == 1.0  # liver and spleen; the kidney counts neither 1 nor 0
    assert "kidney" in summary["not_scored"]
    assert "kidney" in evaluation.markdown().split("## Notes")[1]
    assert evaluation.summary_table().loc["kidney", "dice"] == "not scored"


def test_a_structure_only_predicted_is_not_scored_and_its_false_positives_are_listed(folders):
    pred = organs()
    pred[6:8, 0:2, 0:2] = 3  # a kidney no reference has
    write(folders[0] / "b.nii.gz", pred)
    summary = evaluate(folders, {**LABELS, 3: "kidney"}).summary
    assert summary["overall"]["dice"]["mean"] == 1.0
    assert "predicted in b" in summary["not_scored"]["kidney"]


def test_nan_in_a_float_label_file_is_refused(folders):
    volume = organs().astype(np.float32)
    volume[0, 0, 0] = np.nan
    write(folders[0] / "b.nii.gz", volume)
    with pytest.raises(ValueError, match=r"case 'b'.*b\.nii\.gz holds 1 NaN"):
        evaluate(folders)
    volume[0, 0, 0] = 2.0  # whole numbers in a float file are fine
    write(folders[0] / "b.nii.gz", volume)
    assert evaluate(folders).table.dice.min() < 1.0


# item 3: geometry


def test_a_flipped_prediction_is_refused_and_resampled_on_request(folders):
    # the same anatomy on an x-flipped grid: voxel i holds what the reference has at voxel n-1-i
    flipped_x = (-1, 0, 0, 0, 1, 0, 0, 0, 1)
    write(folders[0] / "b.nii.gz", organs()[:, :, ::-1].copy(), origin=(11.0, 0.0, 0.0), direction=flipped_x)
    with pytest.raises(ValueError, match=r"case 'b'.*b\.nii\.gz.*direction.*--resample-pred"):
        evaluate(folders)
    evaluation = evaluate(folders, resample_pred=True)
    assert (evaluation.table.dice == 1.0).all()
    assert evaluation.table[evaluation.table.case == "b"].resampled.all()
    assert not evaluation.table[evaluation.table.case == "a"].resampled.any()
    assert list(evaluation.summary["resampled"]) == ["b"]


def test_an_origin_100_mm_off_is_refused(folders):
    write(folders[0] / "b.nii.gz", organs(), origin=(100.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"case 'b'.*origin .* by \(100, 0, 0\) voxels"):
        evaluate(folders)
    # resampled, the organs land 100 voxels away: outside the reference grid
    table = evaluate(folders, resample_pred=True).table
    assert (table[table.case == "b"].dice == 0.0).all()


def test_grids_within_the_documented_tolerance_are_one_grid(folders):
    write(folders[0] / "b.nii.gz", organs(), spacing=(1.00001, 1.0, 1.0), origin=(0.005, -0.005, 0.0))
    assert (evaluate(folders).table.dice == 1.0).all()
    write(folders[0] / "b.nii.gz", organs(), spacing=(1.001, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        evaluate(folders)


def test_nrrd_against_nifti_compares_in_one_physical_frame(folders):
    """nibabel's RAS affine and SimpleITK's LPS grid describe the same voxels: no false mismatch."""
    origin, direction = (-40.0, 25.0, 7.5), (0, 1, 0, -1, 0, 0, 0, 0, 1)
    write(folders[0] / "b.nrrd", organs(), spacing=(0.8, 0.9, 2.5), origin=origin, direction=direction)
    (folders[0] / "b.nii.gz").unlink()
    write(folders[1] / "b.nii.gz", organs(), spacing=(0.8, 0.9, 2.5), origin=origin, direction=direction)
    assert (evaluate(folders).table.dice == 1.0).all()
    reference = read_label_image(folders[1] / "b.nii.gz")
    assert reference.origin == pytest.approx(origin)
    np.testing.assert_allclose(reference.direction, np.reshape(direction, (3, 3)), atol=1e-6)


# item 4: truncated files


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_nifti_is_refused(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).integers(0, 3, (30, 30, 30), dtype=np.uint8), np.eye(4)), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(f"x{suffix} is truncated")):
        read_label_image(path)


def test_gzip_with_a_bad_checksum_is_refused(tmp_path):
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), path)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_label_image(path)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_truncated_nrrd_and_metaimage_are_refused(tmp_path, suffix):
    path = write(tmp_path / f"x{suffix}", np.random.default_rng(0).integers(0, 3, (30, 30, 30), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(ValueError, match=rf"cannot read .*x\{suffix}"):
        read_label_image(path)


def test_a_truncated_prediction_names_the_case(folders):
    path = folders[0] / "b.nii.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"case 'b'.*b\.nii\.gz is truncated"):
        evaluate(folders)


def test_command_line_refuses_with_status_2_and_the_fix(folders, capsys):
    write(folders[0] / "b.nii.gz", organs(), origin=(0.0, 0.0, 3.0))
    argv = ["--pred", str(folders[0]), "--ref", str(folders[1]), "--num-classes", "3", "--no-progress"]
    assert main(argv) == 2
    assert "--resample-pred" in capsys.readouterr().err
    assert main([*argv, "--resample-pred"]) == 0
    assert "resampled onto the reference grid" in capsys.readouterr().err
