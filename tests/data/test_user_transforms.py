"""The plan-driven transform chain of user datasets: channel loading, label checks, nnU-Net's ignore label."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch

from medseg.data.synthetic_mri import make_msd, make_nnunet
from medseg.data.user_dataset import user_datalist
from medseg.data.user_transforms import DropIgnoredd, LoadCased, user_transforms
from medseg.planning import plan_dataset

from ._helpers import raises_naming


def test_channel_files_are_stacked_in_channel_order(tmp_path):
    root = make_nnunet(tmp_path / "d", cases=2, test_cases=0, size=16, channels=("T2", "ADC"))
    files = [root / "imagesTr" / f"mri_000_000{c}.nii.gz" for c in (0, 1)]
    image = LoadCased("image", num_channels=2)({"image": [str(f) for f in files]})["image"]
    for channel, file in enumerate(files):
        assert np.allclose(image[channel].numpy(), np.asarray(nib.load(file).dataobj))
    assert image.meta["filename_or_obj"] == str(files[0])


def test_channel_count_other_than_the_dataset_lists_is_refused(tmp_path):
    root = make_msd(tmp_path / "d", cases=2, test_cases=0, size=16, channels=("T2", "ADC"))
    with raises_naming(ValueError, "mri_000.nii.gz", "2 channel(s)", "lists 3"):
        LoadCased("image", num_channels=3)({"image": [str(root / "imagesTr" / "mri_000.nii.gz")]})


def test_label_value_outside_labels_stops_the_chain_naming_file_and_field(tmp_path):
    root = make_nnunet(tmp_path / "d", cases=3, test_cases=0, size=16)
    plan = plan_dataset(root, None, progress=False)
    path = root / "labelsTr" / "mri_001.nii.gz"
    image = nib.load(path)
    data = np.asarray(image.dataobj).copy()
    data[1, 1, 1] = 9
    nib.save(nib.Nifti1Image(data, image.affine), path)
    item = next(d for d in user_datalist(root, "all") if d["name"] == "mri_001")
    with raises_naming(ValueError, str(path), "[9]", "'labels'", "dataset.json"):
        user_transforms(plan, train=False)(item)


def test_validation_chain_gives_the_plan_spacing_and_z_scored_channels(tmp_path):
    root = make_nnunet(tmp_path / "d", cases=3, test_cases=0, size=16, channels=("T2", "ADC"))
    plan = plan_dataset(root, None, progress=False)
    out = user_transforms(plan, train=False)(user_datalist(root, "all")[0])
    assert out["image"].shape[0] == 2 and out["image"].shape[1:] == out["label"].shape[1:]
    for channel in out["image"]:
        assert abs(float(channel.mean())) < 0.05 and abs(float(channel.std()) - 1) < 0.1  # resampling blurs a little


def test_ignored_voxels_leave_foreground_dice_to_annotated_voxels():
    label = torch.tensor([[0, 1, 3, 3, 2]])
    pred = torch.tensor([[0, 1, 1, 2, 2]])
    out = DropIgnoredd("pred", "label", ignore_value=3)({"pred": pred, "label": label})
    assert out["pred"].tolist() == [[0, 1, 0, 0, 2]] and out["label"].tolist() == [[0, 1, 0, 0, 2]]
    assert DropIgnoredd("pred", "label", None)({"pred": pred, "label": label})["pred"] is pred


def test_ignore_label_of_nnunet_is_read_as_ignore_index(tmp_path):
    root = make_nnunet(tmp_path / "d", cases=3, test_cases=0, size=16)
    data = json.loads((root / "dataset.json").read_text())
    data["labels"]["ignore"] = 3
    (root / "dataset.json").write_text(json.dumps(data))
    plan = plan_dataset(root, None, progress=False)
    assert plan["num_classes"] == 3 and plan["ignore_label"] == 3 and plan["label_values"] == [0, 1, 2, 3]
