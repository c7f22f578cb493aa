"""The generic_3d bundle: plan → train → predict → evaluate on nnU-Net v2 and MSD datasets, through monai.bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser, run
from monai.networks.nets import DynUNet

from medseg.data.splits import kfold_split, train_val_split
from medseg.data.synthetic_mri import make_msd, make_nnunet
from medseg.metrics.evaluate import evaluate_folders, read_label_map
from medseg.planning import plan_dataset

from ._common import assert_bundle_properties, last_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "generic_3d" / "configs"
#: CPU test size: no training-batch Dice, plain flips, a higher learning rate for a few short epochs.
FAST = {
    "num_workers": 0,
    "augmentation": "monai",
    "learning_rate": 0.005,
    "train#trainer#key_train_metric": "$None",
    "train#trainer#postprocessing": "$None",
}


def train(bundle_root: Path, dataset: Path, *overlays: Path, **overrides) -> None:
    run(
        config_file=[str(CONFIGS / "train.json"), *map(str, overlays)],
        logging_file=str(CONFIGS / "logging.conf"),
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset),
        **{**FAST, **overrides},
    )


def infer(bundle_root: Path, dataset: Path, **overrides) -> Path:
    run(
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset),
        **{"dataloader#num_workers": 0, **overrides},
    )
    return bundle_root / "predictions"


def foreground_dice(pred_dir: Path, dataset: Path) -> dict[str, float]:
    """Mean Dice per structure of the test predictions, by medseg evaluate reading dataset.json's labels."""
    evaluation = evaluate_folders(
        pred_dir, dataset / "labelsTs", read_label_map(dataset / "dataset.json"), progress=False
    )
    return evaluation.table.groupby("structure").dice.mean().to_dict()


@pytest.fixture(scope="module")
def nnunet_data(tmp_path_factory) -> Path:
    """nnU-Net v2 raw: 2 MRI channels, 3 classes, 8 training and 2 labelled test cases of about 24² × 7 voxels."""
    return make_nnunet(tmp_path_factory.mktemp("generic_nnunet"), cases=8, size=24, channels=("T2", "ADC"), seed=0)


def untrained_model(bundle_root: Path, dataset: Path) -> dict:
    """A plan in ``bundle_root`` and a random DynUNet saved as its ``models/model.pt`` (for inference tests)."""
    plan = plan_dataset(dataset, bundle_root / "plan.json", progress=False)
    config = plan["configurations"]["cpu"]
    net = DynUNet(
        plan["spatial_dims"],
        len(plan["channels"]),
        plan["num_classes"],
        config["kernel_size"],
        config["strides"],
        config["strides"][1:],
        filters=config["filters"],
        norm_name="instance",
        res_block=False,
    )
    (bundle_root / "models").mkdir(parents=True)
    torch.save(net.state_dict(), bundle_root / "models" / "model.pt")
    return plan


# --- end to end ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nnunet_dataset_plan_train_predict_evaluate(tmp_path, nnunet_data):
    train(tmp_path, nnunet_data, max_epochs=12, val_interval=6)
    plan = json.loads((tmp_path / "plan.json").read_text())  # planned on first use, in the run folder
    assert plan["dataset"]["layout"] == "nnunet" and plan["num_classes"] == 3
    assert (tmp_path / "models" / "model.pt").is_file() and last_checkpoint(tmp_path)["trainer"]["epoch"] == 12
    predictions = infer(tmp_path, nnunet_data)
    assert sorted(p.name for p in predictions.iterdir()) == ["mri_008.nii.gz", "mri_009.nii.gz"]  # nnU-Net's names
    dice = foreground_dice(predictions, nnunet_data)
    assert dice["organ"] > 0.5  # chance (the organ's share of the voxels) is about 0.04


@pytest.mark.slow
def test_msd_dataset_trains_through_the_monai_bundle_command_line(tmp_path):
    data = make_msd(tmp_path / "Task01", cases=8, size=24, channels=("FLAIR", "T1", "T2", "ADC"), seed=1)
    overrides = {**FAST, "bundle_root": str(tmp_path / "run"), "dataset_dir": str(data)}
    overrides |= {"max_epochs": 12, "val_interval": 6}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train.json")]
    for key, value in overrides.items():
        command += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the suite's torch.set_num_threads(1): tiny tensors
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = infer(tmp_path / "run", data)
    for name in ("mri_008", "mri_009"):  # each prediction in its 4D input's spatial grid
        pred, image = (
            sitk.ReadImage(str(predictions / f"{name}.nii.gz")),
            sitk.ReadImage(str(data / f"imagesTs/{name}.nii.gz")),
        )
        assert pred.GetSize() == image.GetSize()[:3]
        assert np.allclose(pred.GetSpacing(), image.GetSpacing()[:3]) and np.allclose(
            pred.GetOrigin(), image.GetOrigin()[:3]
        )
    assert foreground_dice(predictions, data)["organ"] > 0.5


# --- predictions in the dataset's own terms -------------------------------------------------------------------------


@pytest.mark.parametrize(("ending", "dims"), [(".nrrd", 3), (".png", 2), (".nii.gz", 2)])
def test_predictions_take_the_dataset_file_ending_and_input_geometry(tmp_path, ending, dims):
    data = make_nnunet(tmp_path / "d", cases=3, test_cases=2, size=24, file_ending=ending, spatial_dims=dims)
    untrained_model(tmp_path / "run", data)
    predictions = infer(tmp_path / "run", data)
    assert sorted(p.name for p in predictions.iterdir()) == [f"mri_003{ending}", f"mri_004{ending}"]
    for name in ("mri_003", "mri_004"):
        pred = sitk.ReadImage(str(predictions / f"{name}{ending}"))
        image = sitk.ReadImage(str(data / "imagesTs" / f"{name}_0000{ending}"))
        assert pred.GetSize() == image.GetSize() and np.allclose(pred.GetSpacing(), image.GetSpacing())
        assert np.allclose(pred.GetOrigin(), image.GetOrigin()) and np.allclose(
            pred.GetDirection(), image.GetDirection()
        )
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}


def test_unlabelled_test_cases_are_predicted_only_when_asked(tmp_path):
    data = make_nnunet(tmp_path / "d", cases=3, test_cases=1, size=16, test_labels=False)
    untrained_model(tmp_path / "run", data)
    with pytest.raises(Exception) as info:
        infer(tmp_path / "run", data)
    assert "no labelled test cases" in repr(info.value) or "no labelled test cases" in str(info.value.__cause__)
    assert [p.name for p in infer(tmp_path / "run", data, predict_split="test_all").iterdir()] == ["mri_003.nii.gz"]


# --- splits and configuration --------------------------------------------------------------------------------------


def parsed(dataset: Path, bundle_root: Path, key: str, **overrides):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"bundle_root": str(bundle_root), "dataset_dir": str(dataset), **overrides})
    return parser.get_parsed_content(key)


def test_validation_comes_from_the_training_cases_and_fold_picks_a_cross_validation_fold(tmp_path, nnunet_data):
    cases = [f"mri_{i:03d}" for i in range(8)]
    train_names = [d["name"] for d in parsed(nnunet_data, tmp_path, "train#datalist")]
    val_names = [d["name"] for d in parsed(nnunet_data, tmp_path, "validate#datalist")]
    assert (train_names, val_names) == train_val_split(cases)
    fold_val = [d["name"] for d in parsed(nnunet_data, tmp_path, "validate#datalist", fold=3)]
    assert fold_val == kfold_split(cases, 3)[1]
    assert not {"mri_008", "mri_009"} & set(train_names + val_names)  # the test cases


def test_network_follows_the_plan(tmp_path, nnunet_data):
    plan = plan_dataset(nnunet_data, tmp_path / "plan.json", progress=False)
    net = parsed(nnunet_data, tmp_path, "network_def", configuration="gpu")
    config = plan["configurations"]["gpu"]
    assert [list(k) for k in net.kernel_size] == config["kernel_size"] and net.filters == config["filters"]
    assert net.in_channels == 2 and net.out_channels == 3


def test_bundle_defines_monai_train_and_inference_properties(tmp_path, nnunet_data):
    assert_bundle_properties(CONFIGS, tmp_path, dataset_dir=str(nnunet_data), num_workers=0)


def test_boundary_overlay_brings_its_distance_map_and_trains(tmp_path, nnunet_data):
    overlay = ROOT / "configs" / "losses" / "boundary.json"
    train(
        tmp_path, nnunet_data, overlay, max_epochs=1, val_interval=5, **{"train#dataset#data": "$@train#datalist[:2]"}
    )
    assert last_checkpoint(tmp_path)["trainer"]["iteration"] == 2


def test_dataset_with_an_ignore_label_trains_and_validates(tmp_path):
    import nibabel as nib

    data = make_nnunet(tmp_path / "d", cases=4, test_cases=0, size=16, seed=2)
    meta = json.loads((data / "dataset.json").read_text())
    meta["labels"]["ignore"] = 3
    (data / "dataset.json").write_text(json.dumps(meta))
    for path in sorted((data / "labelsTr").glob("*.nii.gz")):  # the first slices left unannotated
        image = nib.load(path)
        labels = np.asarray(image.dataobj).copy()
        labels[..., :2] = 3
        nib.save(nib.Nifti1Image(labels, image.affine, image.header), path)
    train(tmp_path / "run", data, max_epochs=1, val_interval=1)
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["ignore_label"] == 3
    assert (tmp_path / "run" / "models" / "model.pt").is_file()  # validation ran and chose a model


@pytest.mark.parametrize(("ending", "augmentation"), [(".png", "nnunet"), (".nii.gz", "monai")])
def test_2d_dataset_trains_a_2d_network(tmp_path, ending, augmentation):
    data = make_nnunet(tmp_path / "d", cases=4, test_cases=1, size=48, file_ending=ending, spatial_dims=2)
    train(tmp_path / "run", data, max_epochs=1, val_interval=1, augmentation=augmentation)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["spatial_dims"] == 2 and len(plan["configurations"]["cpu"]["patch_size"]) == 2
    assert (tmp_path / "run" / "models" / "model.pt").is_file()
    prediction, image = infer(tmp_path / "run", data) / f"mri_004{ending}", data / f"imagesTs/mri_004_0000{ending}"
    assert sitk.ReadImage(str(prediction)).GetSize() == sitk.ReadImage(str(image)).GetSize()
