"""`medseg evaluate` on what medseg writes: case ids across naming schemes, a bundle's label space (issue 9, item 1)."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medseg.bundles import score_btcv_predictions
from medseg.data import btcv_datalist
from medseg.data.synthetic import make_synapse
from medseg.metrics.cases import case_id, find_cases
from medseg.metrics.evaluate import evaluate_folders, main
from medseg.metrics.labels import bundle_label_space

# BTCV → Synapse by hand (TransUNet's preprocessing): 1 spleen, 2 r. kidney, 3 l. kidney, 4 gallbladder,
# 6 liver → 5, 7 stomach → 6, 8 aorta → 7, 11 pancreas → 8; esophagus, veins and adrenals (5, 9, 10, 12, 13) → 0
BY_HAND = np.array([0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0])
ORGANS = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("img0007_seg.nii.gz", "0007"),  # MONAI SaveImaged after the BTCV image img0007.nii.gz
        ("label0007.nii.gz", "0007"),  # BTCV reference
        ("case0007.nii.gz", "0007"),  # Synapse
        ("case0007_pred.nii.gz", "0007"),  # TransUNet test_save_path
        ("case0007_gt.nii.gz", "0007"),
        ("la_007.nii.gz", "la_007"),  # nnU-Net / Decathlon: same name in both folders
        ("la_007_0000.nii.gz", "la_007"),  # nnU-Net channel suffix
        ("case_a.nrrd", "case_a"),  # a prefix is stripped only before a digit
        ("frankfurt_000000_000294", "frankfurt_000000_000294"),
    ],
)
def test_case_ids(name, expected):
    assert case_id(name) == expected


def test_two_files_with_one_case_id_are_an_error(tmp_path):
    for name in ("img0007_seg.nii.gz", "case0007.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=r"case '0007' matches two files .*--pred-glob"):
        find_cases(tmp_path)


def test_the_bundle_label_space_is_read_from_its_configs():
    space = bundle_label_space("synapse_unet3d")
    assert space.mapping == {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}
    assert list(space.names.values()) == ORGANS
    assert space.raw_values == frozenset(range(14))
    np.testing.assert_array_equal(space.lookup, BY_HAND)
    assert bundle_label_space("synapse_transunet").mapping is None  # trains on Synapse labels already


def liver_eroded(synapse: np.ndarray) -> np.ndarray:
    """A prediction: the Synapse reference with the liver's top slice (last nibabel axis) set to background."""
    pred = synapse.copy()
    top = np.flatnonzero((pred == 5).any(axis=(0, 1))).max()
    pred[..., top][pred[..., top] == 5] = 0
    return pred


@pytest.fixture(scope="module")
def btcv(tmp_path_factory):
    """Synthetic raw BTCV (4 cases, 2 for testing) and demo-style predictions ``img000N_seg.nii.gz`` of its tests."""
    root = tmp_path_factory.mktemp("btcv")
    data = make_synapse(root / "data", layout="btcv", cases=4, size=32, seed=0, datalist=True)
    (root / "pred").mkdir()
    for entry in btcv_datalist(data, "test"):
        label = nib.load(entry["label"])
        synapse = BY_HAND[np.asarray(label.dataobj)]
        image_name = entry["image"].rsplit("/", 1)[-1].split(".")[0]
        nib.save(
            nib.Nifti1Image(liver_eroded(synapse).astype(np.uint8), label.affine),
            root / "pred" / f"{image_name}_seg.nii.gz",
        )
    return root


def test_raw_btcv_references_are_mapped_through_the_bundle(btcv, tmp_path):
    ref_dir = btcv / "data" / "RawData" / "Training" / "label"
    argv = ["--pred", str(btcv / "pred"), "--ref", str(ref_dir), "--no-progress", "--output", str(tmp_path)]
    assert main([*argv, "--labels", "synapse_unet3d", "--only-predicted"]) == 0
    table = pd.read_csv(tmp_path / "metrics.csv", dtype={"case": str})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reference_space"]["mode"] == "raw"
    assert len(summary["unpredicted_references"]) == 2  # the training cases' labels
    for case, rows in table.groupby("case"):
        label = np.asarray(nib.load(ref_dir / f"label{case}.nii.gz").dataobj)
        liver_ref = BY_HAND[label] == 5
        liver_pred = liver_eroded(BY_HAND[label]) == 5
        liver = rows[rows.structure == "liver"].iloc[0]
        assert liver.dice == 2 * liver_pred.sum() / (liver_pred.sum() + liver_ref.sum())  # by hand
        assert (rows[rows.structure != "liver"].dice == 1.0).all()


def test_the_demo_scorer_and_the_command_line_give_one_table(btcv, tmp_path):
    data = btcv / "data"
    demo = score_btcv_predictions(btcv / "pred", data)
    cli = evaluate_folders(
        btcv / "pred", data / "RawData/Training/label", bundle_label_space("synapse_unet3d"), only_predicted=True,
        progress=False,
    ).table  # fmt: skip
    assert list(demo.case.unique()) == [f"img{c}" for c in cli.case.unique()]
    pd.testing.assert_frame_equal(demo.drop(columns="case"), cli.drop(columns="case"))


def test_raw_references_without_the_bundle_are_refused(btcv, capsys):
    ref_dir = btcv / "data" / "RawData" / "Training" / "label"
    argv = ["--pred", str(btcv / "pred"), "--ref", str(ref_dir), "--only-predicted", "--no-progress"]
    assert main([*argv, "--num-classes", "9"]) == 2
    err = capsys.readouterr().err
    assert "label0001.nii.gz holds label values 9, 10, 11, 12" in err and "--labels <bundle>" in err


def test_references_already_in_the_bundle_labels_are_not_mapped_twice(btcv, tmp_path):
    for entry in btcv_datalist(btcv / "data", "test"):  # Synapse references (0..8) named like nnU-Net
        label = nib.load(entry["label"])
        number = entry["label"].rsplit("label", 1)[-1]
        nib.save(
            nib.Nifti1Image(BY_HAND[np.asarray(label.dataobj)].astype(np.uint8), label.affine),
            tmp_path / f"case{number}",
        )
    labels = bundle_label_space("synapse_unet3d")
    with pytest.raises(ValueError, match=r"--ref-space raw .* or --ref-space bundle"):
        evaluate_folders(btcv / "pred", tmp_path, labels, progress=False)  # 1..8 are also raw BTCV labels
    table = evaluate_folders(btcv / "pred", tmp_path, labels, ref_space="bundle", progress=False).table
    assert (table[table.structure != "liver"].dice == 1.0).all()
    raw = btcv / "data" / "RawData" / "Training" / "label" / "label0001.nii.gz"
    (tmp_path / "case0001.nii.gz").write_bytes(raw.read_bytes())  # one raw reference among Synapse ones
    with pytest.raises(ValueError, match="keep one kind of reference per folder"):
        evaluate_folders(btcv / "pred", tmp_path, labels, ref_space="bundle", progress=False)


def test_one_folder_of_pred_and_gt_files_needs_no_globs(tmp_path):
    """synapse_transunet's eval/ (TransUNet's test_save_path): case0001_pred, case0001_gt, case0001_img."""
    volume = np.zeros((6, 7, 8), dtype=np.uint8)
    volume[1:4, 2:5, 3:6] = 5  # liver in Synapse labels
    for kind in ("pred", "gt", "img"):
        nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / f"case0001_{kind}.nii.gz")
    table = evaluate_folders(tmp_path, tmp_path, bundle_label_space("synapse_transunet"), progress=False).table
    assert table.case.unique().tolist() == ["0001"]
    assert table.set_index("structure").loc["liver", "dice"] == 1.0
