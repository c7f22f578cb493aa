"""Folder evaluation: file reading with header spacing, case matching, bad input, outputs and the command line."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from medseg.metrics.evaluate import (
    compare_to_baseline,
    evaluate_folders,
    find_cases,
    main,
    read_label_image,
    read_label_map,
)

from ._masks import label_volume

LABELS = {1: "liver", 2: "spleen"}


def write(path: Path, array: np.ndarray, spacing_xyz: tuple[float, ...] = (0.5, 1.0, 2.0)) -> Path:
    """Write ``array`` (SimpleITK order: z, y, x) with the header spacing ``spacing_xyz`` (x, y, z)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))
    return path


def cube_pair() -> tuple[np.ndarray, np.ndarray]:
    """The hand-worked pair of test_scoring (cube shifted one voxel along axis 0), as label 1."""
    ref = np.zeros((12, 12, 12), dtype=np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    pred = np.zeros_like(ref)
    pred[3:7, 2:6, 2:6] = 1
    return pred, ref


@pytest.fixture
def folders(tmp_path):
    """Three cases of two organs: case_a the cube pair, case_b and case_c random label maps (NIfTI)."""
    pred, ref = cube_pair()
    write(tmp_path / "pred" / "case_a.nii.gz", pred)
    write(tmp_path / "ref" / "case_a.nii.gz", ref)
    for index, case in enumerate(("case_b", "case_c")):
        write(tmp_path / "pred" / f"{case}.nii.gz", label_volume((10, 12, 11), 2, seed=2 * index))
        write(tmp_path / "ref" / f"{case}.nii.gz", label_volume((10, 12, 11), 2, seed=2 * index + 1))
    return tmp_path / "pred", tmp_path / "ref"


def test_cube_case_uses_the_header_spacing_in_array_axis_order(folders):
    table = evaluate_folders(*folders, LABELS, progress=False).table
    row = table[(table.case == "case_a") & (table.structure == "liver")].iloc[0]
    # header spacing (x, y, z) = (0.5, 1, 2) is (2, 1, 0.5) along the array axes (z, y, x): the hand-worked numbers
    assert row.dice == 0.75
    assert row.hd_mm == 2.0
    assert row.assd_mm == pytest.approx(68 / 112)
    assert row.volume_ref_ml == pytest.approx(0.064)
    spleen = table[(table.case == "case_a") & (table.structure == "spleen")].iloc[0]
    assert spleen.empty_mask == "both" and spleen.dice == 1.0


def test_summary_statistics(folders):
    evaluation = evaluate_folders(*folders, LABELS, progress=False)
    table, summary = evaluation.table, evaluation.summary
    liver = table[table.structure == "liver"].dice.to_numpy()
    assert summary["per_structure"]["liver"]["dice"]["mean"] == pytest.approx(liver.mean())
    assert summary["per_structure"]["liver"]["dice"]["std"] == pytest.approx(liver.std(ddof=1))
    assert summary["per_structure"]["liver"]["dice"]["median"] == pytest.approx(np.median(liver))
    spleen = table[table.structure == "spleen"].dice.to_numpy()
    # overall: mean of the structure means; std and median over the per-case means of the structures
    assert summary["overall"]["dice"]["mean"] == pytest.approx((liver.mean() + spleen.mean()) / 2)
    case_means = (liver + spleen) / 2  # rows are sorted by case for both structures
    assert summary["overall"]["dice"]["std"] == pytest.approx(case_means.std(ddof=1))
    assert summary["overall"]["dice"]["median"] == pytest.approx(np.median(case_means))
    assert "volume_ref_ml" in summary["per_structure"]["liver"]
    assert "volume_ref_ml" not in summary["overall"]
    assert summary["convention"]["name"] == "clinical"
    assert summary["n_cases"] == 3


def test_workers_give_the_same_table(folders):
    serial = evaluate_folders(*folders, LABELS, progress=False).table
    parallel = evaluate_folders(*folders, LABELS, workers=2, progress=False).table
    pd.testing.assert_frame_equal(serial, parallel)


def test_surfels_and_conventions_reach_the_table(folders):
    surfels = evaluate_folders(*folders, LABELS, surface="surfels", nsd_tolerance=2.0, progress=False)
    assert surfels.summary["convention"]["surface"] == "surfels"
    assert surfels.summary["convention"]["nsd_tolerance_mm"] == 2.0
    transunet = evaluate_folders(*folders, LABELS, convention="transunet", progress=False).table
    assert list(transunet.columns[:5]) == ["case", "label", "structure", "dice", "hd95_voxels"]
    with pytest.raises(ValueError, match="does not apply"):
        evaluate_folders(*folders, LABELS, convention="transunet", surface="surfels", progress=False)


def test_nrrd_mha_and_nifti_read_alike(tmp_path):
    volume = label_volume((6, 7, 8), 3, seed=0)
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        image = read_label_image(write(tmp_path / f"x{suffix}", volume, (0.7, 0.8, 3.0)))
        np.testing.assert_array_equal(image.array, volume)
        assert image.spacing == pytest.approx((3.0, 0.8, 0.7))


def test_nifti_that_simpleitk_refuses_is_read_with_nibabel(tmp_path):
    data = label_volume((5, 6, 7), 2, seed=1)  # nibabel order (x, y, z)
    sheared = np.array([[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]])
    path = tmp_path / "sheared.nii.gz"
    nib.save(nib.Nifti1Image(data, sheared), str(path))
    with pytest.raises(RuntimeError, match="orthonormal"):
        sitk.ReadImage(str(path))
    image = read_label_image(path)
    np.testing.assert_array_equal(image.array, data.transpose(2, 1, 0))
    assert image.spacing == pytest.approx((2.5, np.hypot(0.5, 1.0), 1.0))  # column norms of the affine, reversed


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"0": "background", "1": "liver", "3": "spleen"}, {1: "liver", 3: "spleen"}),
        (  # MONAI bundle metadata.json
            {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "liver"}}}}},
            {1: "liver"},
        ),
        ({"labels": {"background": 0, "liver": 1, "spleen": 2}}, {1: "liver", 2: "spleen"}),  # nnU-Net v2
        ({"labels": {"0": "background", "1": "liver"}}, {1: "liver"}),  # Decathlon
    ],
)
def test_label_map_formats(tmp_path, content, expected):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(content))
    assert read_label_map(path) == expected


def test_label_map_from_a_bundle_folder(tmp_path):
    (tmp_path / "configs").mkdir()
    metadata = {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "aorta"}}}}}
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(metadata))
    assert read_label_map(tmp_path) == {1: "aorta"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"labels": {"background": 0, "kidney": [1, 2]}}', "regions"),
        ('{"liver": 1}', "integer label values"),
        ('{"network_data_format": {"outputs": {}}}', "no channel_def"),
        ('{"0": "background"}', "no positive label values"),
    ],
)
def test_bad_label_maps_raise(tmp_path, content, message):
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_label_map(path)


def test_missing_prediction_names_the_case(folders):
    pred_dir, ref_dir = folders
    (pred_dir / "case_b.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"no prediction .* for cases case_b .*--allow-missing"):
        evaluate_folders(pred_dir, ref_dir, LABELS, progress=False)


def test_allow_missing_scores_a_missing_prediction_as_a_failure(folders):
    pred_dir, ref_dir = folders
    (pred_dir / "case_b.nii.gz").unlink()
    evaluation = evaluate_folders(pred_dir, ref_dir, LABELS, allow_missing=True, progress=False)
    rows = evaluation.table[evaluation.table.case == "case_b"]
    assert rows.missing.all()
    assert (rows.dice == 0).all() and (rows.empty_mask == "prediction").all()
    # worst distance: diagonal of the 10×12×11 image at (2, 1, 0.5) mm
    assert rows.hd95_mm.iloc[0] == pytest.approx(np.sqrt((9 * 2) ** 2 + 11**2 + (10 * 0.5) ** 2))
    assert evaluation.summary["missing"] == ["case_b"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: write(p, np.zeros((10, 12, 10), np.uint8)), r"case 'case_b'.*prediction shape \(10, 12, 10\)"),
        (lambda p: write(p, label_volume((10, 12, 11), 2, 0), (0.5, 1.0, 2.5)), r"case 'case_b'.*spacing"),
        (lambda p: p.write_bytes(b"not an image"), r"case 'case_b'.*cannot read .*case_b\.nii\.gz"),
        (lambda p: write(p, np.full((10, 12, 11), 0.5, np.float32)), r"case 'case_b'.*non-integer"),
    ],
)
def test_bad_prediction_names_the_case(folders, damage, message):
    pred_dir, ref_dir = folders
    damage(pred_dir / "case_b.nii.gz")
    with pytest.raises(ValueError, match=message):
        evaluate_folders(pred_dir, ref_dir, LABELS, progress=False)


def test_case_matching(tmp_path):
    volume = label_volume((4, 5, 6), 1, seed=0)
    # TransUNet's test_save_path: case0001_pred.nii.gz, case0001_gt.nii.gz and case0001_img.nii.gz in one folder
    for kind in ("pred", "gt", "img"):
        write(tmp_path / "out" / f"case0001_{kind}.nii.gz", volume)
    assert find_cases(tmp_path / "out", "*_gt.nii.gz") == {"0001": tmp_path / "out" / "case0001_gt.nii.gz"}
    evaluation = evaluate_folders(
        tmp_path / "out", tmp_path / "out", {1: "a"}, "transunet", pred_glob="*_pred.nii.gz", ref_glob="*_gt.nii.gz",
        progress=False,
    )  # fmt: skip
    assert evaluation.table.dice.tolist() == [1.0]
    write(tmp_path / "twice" / "a" / "x.nii.gz", volume)
    write(tmp_path / "twice" / "b" / "x.nrrd", volume)
    with pytest.raises(ValueError, match="case 'x' matches two files"):
        find_cases(tmp_path / "twice")
    with pytest.raises(ValueError, match="must contain a"):
        find_cases(tmp_path / "out", "case0001_gt.nii.gz")


def test_predictions_without_reference_are_ignored_with_a_warning(folders):
    pred_dir, ref_dir = folders
    write(pred_dir / "extra.nii.gz", np.zeros((3, 3, 3), np.uint8))
    with pytest.warns(UserWarning, match="without reference ignored: extra"):
        table = evaluate_folders(pred_dir, ref_dir, LABELS, progress=False).table
    assert "extra" not in set(table.case)


def test_bad_arguments_raise(folders, tmp_path):
    with pytest.raises(ValueError, match="labels are needed"):
        evaluate_folders(*folders, None, progress=False)
    with pytest.raises(ValueError, match="no reference files"):
        evaluate_folders(folders[0], tmp_path, LABELS, ref_glob="*.nrrd", progress=False)
    with pytest.raises(FileNotFoundError, match="folder does not exist"):
        evaluate_folders(folders[0], tmp_path / "nowhere", LABELS, progress=False)
    with pytest.raises(ValueError, match="workers"):
        evaluate_folders(*folders, LABELS, workers=0, progress=False)
    with pytest.raises(ValueError, match="names must be unique"):
        evaluate_folders(*folders, {1: "kidney", 2: "kidney"}, progress=False)


def test_command_line_writes_every_format(folders, tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"1": "liver", "2": "spleen"}))
    out = tmp_path / "out"
    argv = ["--pred", str(folders[0]), "--ref", str(folders[1]), "--labels", str(labels), "--output", str(out)]
    assert main([*argv, "--format", "csv", "tsv", "json", "md", "html", "latex", "--no-progress"]) == 0
    table = pd.read_csv(out / "metrics.csv")
    assert list(table.columns[:9]) == [
        "case",
        "label",
        "structure",
        "dice",
        "iou",
        "hd_mm",
        "hd95_mm",
        "assd_mm",
        "nsd",
    ]
    assert len(table) == 6
    pd.testing.assert_frame_equal(table, pd.read_csv(out / "metrics.tsv", sep="\t"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["convention"]["nsd_tolerance_mm"] == 1.0
    assert summary["convention"]["empty_policy"]["both_empty"]["dice"] == 1.0
    markdown = (out / "summary.md").read_text()
    assert "| liver" in markdown and "HD95: max of the two directed 95th percentiles" in markdown
    assert "<table" in (out / "summary.html").read_text()
    assert "\\begin{tabular}" in (out / "summary.tex").read_text()
    assert "| overall" in capsys.readouterr().out


def test_command_line_compares_with_a_baseline(folders, tmp_path):
    out = tmp_path / "out"
    argv = ["--pred", str(folders[0]), "--ref", str(folders[1]), "--num-classes", "3", "--no-progress"]
    assert main([*argv, "--output", str(out)]) == 0
    baseline = pd.read_csv(out / "metrics.csv")
    baseline["dice"] -= 0.1
    baseline.to_csv(tmp_path / "baseline.csv", index=False)
    assert main([*argv, "--output", str(out), "--compare-to", str(tmp_path / "baseline.csv")]) == 0
    comparison = pd.read_csv(out / "comparison.csv")
    dice = comparison[comparison.metric == "dice"]
    assert dice.mean_difference.to_numpy() == pytest.approx([0.1, 0.1, 0.1])
    assert list(dice.structure) == ["label_1", "label_2", "overall"]
    assert (out / "comparison.md").read_text().startswith("# Paired comparison")


def test_command_line_reports_bad_input_with_status_2(folders, capsys):
    assert main(["--pred", str(folders[0]), "--ref", str(folders[1]), "--no-progress"]) == 2
    assert "pass --labels" in capsys.readouterr().err
    (folders[0] / "case_c.nii.gz").unlink()
    assert main(["--pred", str(folders[0]), "--ref", str(folders[1]), "--num-classes", "3", "--no-progress"]) == 2
    assert "case_c" in capsys.readouterr().err


def test_compare_to_a_baseline_on_other_cases_is_refused_unless_allowed(folders, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--pred", str(folders[0]), "--ref", str(folders[1]), "--num-classes", "3", "--no-progress"]
    assert main([*argv, "--output", str(out)]) == 0
    baseline = pd.read_csv(out / "metrics.csv")
    baseline = baseline[baseline.case != "case_c"]  # the baseline lacks a case
    baseline.loc[baseline.case == "case_b", "case"] = "case_x"  # and names another one differently
    baseline.to_csv(tmp_path / "baseline.csv", index=False)
    compare = [*argv, "--output", str(out), "--compare-to", str(tmp_path / "baseline.csv")]
    assert main(compare) == 2
    err = capsys.readouterr().err
    assert "cases only in this run: case_b, case_c" in err and "cases only in the baseline: case_x" in err
    assert main([*compare, "--allow-unmatched"]) == 0
    assert "left out: cases only in this run: case_b, case_c" in capsys.readouterr().err
    comparison = pd.read_csv(out / "comparison.csv")
    assert (comparison.n == 1).all()  # case_a only
    assert "cases only in the baseline: case_x" in (out / "comparison.md").read_text()


def test_compare_to_matches_case_ids_across_naming_schemes(tmp_path):
    for case, seed in (("0001", 0), ("0002", 2)):
        write(tmp_path / "pred" / f"img{case}_seg.nii.gz", label_volume((6, 7, 8), 2, seed=seed))
        write(tmp_path / "ref" / f"label{case}.nii.gz", label_volume((6, 7, 8), 2, seed=seed + 1))
    evaluation = evaluate_folders(tmp_path / "pred", tmp_path / "ref", LABELS, progress=False)
    assert sorted(evaluation.table.case.unique()) == ["0001", "0002"]
    baseline = evaluation.table.assign(case="img" + evaluation.table.case, dice=evaluation.table.dice - 0.25)
    baseline.to_csv(tmp_path / "demo_metrics.csv", index=False)  # the demo names its cases after the images
    comparison, unmatched = compare_to_baseline(evaluation, tmp_path / "demo_metrics.csv")
    assert unmatched == []
    dice = comparison[comparison.metric == "dice"]
    assert (dice.n == 2).all() and dice.mean_difference.to_numpy() == pytest.approx([0.25, 0.25, 0.25])


@pytest.fixture
def monai_folders(tmp_path):
    """case_a: the cube pair (liver) and a spleen that no reference has; case_b: a liver that is not predicted."""
    pred, ref = cube_pair()
    pred[8:10, 8:10, 8:10] = 2
    write(tmp_path / "pred" / "case_a.nii.gz", pred)
    write(tmp_path / "ref" / "case_a.nii.gz", ref)
    write(tmp_path / "pred" / "case_b.nii.gz", np.zeros_like(ref))
    write(tmp_path / "ref" / "case_b.nii.gz", ref)
    return tmp_path / "pred", tmp_path / "ref"


def test_command_line_monai_convention_with_chessboard_distances(monai_folders, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--pred", str(monai_folders[0]), "--ref", str(monai_folders[1]), "--num-classes", "3", "--no-progress"]
    assert main([*argv, "--convention", "monai", "--distance-metric", "chessboard", "--output", str(out)]) == 0
    table = pd.read_csv(out / "metrics.csv").set_index(["case", "structure"])
    assert list(table.columns[1:7]) == ["dice", "iou", "hd_voxels", "hd95_voxels", "assd_voxels", "nsd"]
    # the cube shifted one voxel: one chessboard step, whatever the header spacing (2, 1, 0.5 mm)
    assert table.loc[("case_a", "label_1"), ["hd_voxels", "hd95_voxels"]].tolist() == [1.0, 1.0]
    # MONAI's values for an empty mask: the liver of case_b is not predicted; the spleen is in no reference,
    # and keeps MONAI's values (NaN Dice, inf HD) instead of being "not scored"
    assert table.loc[("case_b", "label_1"), ["dice", "hd_voxels", "assd_voxels", "nsd"]].tolist() == [
        0.0,
        np.inf,
        np.inf,
        0.0,
    ]
    assert np.isnan(table.loc[("case_b", "label_1"), "hd95_voxels"])
    spleen = table.loc[("case_a", "label_2")]
    assert np.isnan(spleen.dice) and spleen.hd_voxels == np.inf
    summary = json.loads((out / "summary.json").read_text())
    assert summary["convention"]["name"] == "monai"
    assert summary["convention"]["distance_metric"] == "chessboard"
    assert summary["convention"]["nsd_tolerance_voxels"] == 1.0
    assert summary["per_structure"]["label_1"]["hd_voxels"]["mean"] == "inf"  # JSON has no inf
    assert summary["per_structure"]["label_1"]["dice"]["mean"] == pytest.approx(0.75 / 2)
    assert summary["per_structure"]["label_2"]["dice"]["n"] == 0  # NaN left out, as MONAI's reductions
    assert "kept" in summary["not_scored"]["label_2"]
    assert "Surface: voxels; distances in voxels" in (out / "summary.md").read_text()
    # a paired comparison with inf is undefined: refused, naming the columns
    assert main([*argv, "--convention", "monai", "--output", str(out), "--compare-to", str(out / "metrics.csv")]) == 2
    assert "infinite values" in capsys.readouterr().err


def test_distance_metric_where_it_does_not_apply_is_refused(folders):
    with pytest.raises(ValueError, match="does not apply to the 'transunet' convention"):
        evaluate_folders(*folders, LABELS, convention="transunet", distance_metric="taxicab", progress=False)
    with pytest.raises(ValueError, match="cityscapes"):
        evaluate_folders(*folders, convention="cityscapes", distance_metric="taxicab", progress=False)
