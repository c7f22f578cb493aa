"""``medseg plan``: fingerprint, target spacing, normalisation, topology and memory, the plan file and its summary."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import DynUNet

from medseg.data.synthetic_mri import make_msd, make_nnunet
from medseg.data.user_dataset import read_user_dataset
from medseg.data.user_transforms import NormalizePland
from medseg.planning import (
    configure,
    ensure_plan,
    estimate_memory,
    extract_fingerprint,
    load_plan,
    make_plan,
    normalization_scheme,
    plan_dataset,
    plan_summary,
    pooling,
    target_spacing,
)

from .data._helpers import raises_naming


@pytest.fixture(scope="module")
def nnunet_root(tmp_path_factory):
    return make_nnunet(tmp_path_factory.mktemp("plan_nnunet"), cases=5, size=24, channels=("T2", "ADC"), seed=4)


# --- target spacing: nnU-Net's anisotropy rule -------------------------------------------------------------------


def test_isotropic_data_gets_the_median_spacing():
    spacing, anisotropic = target_spacing([[1, 1, 1.5], [0.8, 0.8, 1.0], [0.9, 0.9, 2.0]], [[200, 200, 150]] * 3)
    assert spacing == [0.9, 0.9, 1.5] and not anisotropic


def test_thick_slices_with_few_voxels_take_the_10th_percentile():
    spacings = [[1, 1, 4.0], [1, 1, 5.0], [1, 1, 5.5], [1, 1, 6.0]]
    spacing, anisotropic = target_spacing(spacings, [[200, 200, 30]] * 4)
    # hand-worked: median z 5.25 > 3 × 1 and 30 × 3 < 200; 10th percentile of (4, 5, 5.5, 6) = 4 + 0.3 × 1 = 4.3
    assert anisotropic and spacing == pytest.approx([1, 1, 4.3])


def test_thick_slices_with_many_voxels_keep_the_median():
    spacing, anisotropic = target_spacing([[1, 1, 4.0], [1, 1, 6.0]], [[200, 200, 100]] * 2)
    assert not anisotropic and spacing == pytest.approx([1, 1, 5.0])


def test_anisotropic_target_is_never_finer_than_the_other_axes():
    spacings = [[2, 2, 1.0], [2, 2, 1.0], [2, 2, 7.0], [2, 2, 8.0], [2, 2, 9.0]]
    spacing, anisotropic = target_spacing(spacings, [[200, 200, 30]] * 5)
    assert anisotropic and spacing[2] == pytest.approx(2.0)  # the 10th percentile, 1 mm, raised to the others' 2 mm


# --- normalisation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "scheme"),
    [
        ("CT", "ct"),
        ("ct", "ct"),
        ("T2", "zscore"),
        ("ADC", "zscore"),
        ("noNorm", "noNorm"),
        ("rgb_to_0_1", "rgb_to_0_1"),
    ],
)
def test_scheme_follows_the_channel_name_as_nnunet(name, scheme):
    assert normalization_scheme(name) == scheme


def test_ct_channel_is_clipped_then_z_scored_with_dataset_statistics():
    image = torch.tensor([[[-1000.0, -50.0, 40.0, 60.0, 3000.0]]])
    step = NormalizePland("image", [{"normalization": "ct", "clip": [-100.0, 200.0], "mean": 50.0, "std": 25.0}])
    out = step({"image": image})["image"]
    expected = (np.clip([-1000.0, -50.0, 40.0, 60.0, 3000.0], -100, 200) - 50.0) / 25.0
    assert np.allclose(out.numpy().ravel(), expected, atol=1e-5)


def test_other_channels_are_z_scored_per_image_each_on_its_own():
    rng = np.random.default_rng(0)
    image = torch.tensor(np.stack([rng.normal(500, 80, (6, 7)), rng.normal(2, 0.1, (6, 7))]), dtype=torch.float32)
    out = NormalizePland("image", [{"normalization": "zscore"}] * 2)({"image": image})["image"].numpy()
    for channel, source in zip(out, image.numpy(), strict=True):
        assert np.allclose(channel, (source - source.mean()) / source.std(), atol=1e-4)


def test_plan_uses_ct_statistics_of_the_training_foreground_only(tmp_path, nnunet_root):
    root = shutil.copytree(nnunet_root, tmp_path / "ct")
    data = json.loads((root / "dataset.json").read_text())
    data["channel_names"] = {"0": "CT", "1": "ADC"}
    (root / "dataset.json").write_text(json.dumps(data))
    plan = plan_dataset(root, None, voxels_per_case=200_000, progress=False)
    channel = plan["channels"][0]
    assert channel["normalization"] == "ct" and plan["channels"][1]["normalization"] == "zscore"
    # independent: every labelled voxel of every training case (test cases must not count), each case weighing
    # the same in total, as nnU-Net draws the same number of voxels from every case
    cases = [
        np.asarray(nib.load(root / f"imagesTr/{c}_0000.nii.gz").dataobj)[
            np.asarray(nib.load(root / f"labelsTr/{c}.nii.gz").dataobj) > 0
        ]
        for c in sorted(read_user_dataset(root).training)
    ]
    values = np.concatenate(cases)
    weights = np.concatenate([np.full(v.size, 1.0 / v.size) for v in cases]) / len(cases)
    mean = float(np.sum(weights * values))
    std = float(np.sqrt(np.sum(weights * (values - mean) ** 2)))
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    percentiles = [values[order][np.searchsorted(cumulative, q)] for q in (0.005, 0.995)]
    assert channel["mean"] == pytest.approx(mean, rel=0.01)
    assert channel["std"] == pytest.approx(std, rel=0.02)
    assert channel["clip"] == pytest.approx(percentiles, rel=0.03)


# --- topology and memory ------------------------------------------------------------------------------------------


def test_pooling_waits_for_thick_slices_as_nnunet():
    net = pooling([0.5, 0.5, 2.0], [64, 64, 16])
    # hand-worked: z (2 mm) joins once in-plane spacing has doubled twice; each side keeps ≥ 4 voxels
    assert net["strides"] == [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]
    assert net["kernel_size"] == [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert net["patch_size"] == [64, 64, 16]


def test_patch_is_padded_to_the_network_divisor():
    net = pooling([1.0, 1.0], [50, 70])
    divisor = np.prod(net["strides"], axis=0)
    assert all(p % d == 0 and p >= s for p, d, s in zip(net["patch_size"], divisor, [50, 70], strict=True))


def test_estimate_counts_every_activation_of_a_dynunet():
    strides, kernels, filters = [[1, 1, 1], [2, 2, 1], [2, 2, 2]], [[3, 3, 1], [3, 3, 3], [3, 3, 3]], [4, 8, 16]
    net = DynUNet(3, 2, 3, kernels, strides, strides[1:], filters=filters, norm_name="instance", res_block=False)
    counted = []
    kinds = (torch.nn.Conv3d, torch.nn.ConvTranspose3d, torch.nn.InstanceNorm3d)
    hooks = [
        m.register_forward_hook(lambda m, i, o: counted.append(o.numel()))
        for m in net.modules()
        if isinstance(m, kinds) and m is not net.output_block.conv.conv
    ]
    x = torch.zeros(1, 2, 16, 16, 8)
    net(x)
    for hook in hooks:
        hook.remove()
    concatenations = 2 * (8 * 8 * 8 * 8 + 4 * 16 * 16 * 8)  # skip + upsampled features at the two decoder stages
    elements = sum(counted) + concatenations + x.numel() + 3 * 16 * 16 * 8  # + input and logits
    estimate = estimate_memory([16, 16, 8], strides, kernels, filters, 2, 3, batch=1, bytes_per_activation=1.0)
    weights_term = estimate_memory([16, 16, 8], strides, kernels, filters, 2, 3, batch=0)
    assert estimate - weights_term == elements
    assert weights_term == pytest.approx(16.0 * sum(p.numel() for p in net.parameters()), rel=0.05)


def test_configuration_fits_its_budget_and_grows_with_it():
    small = configure([1.0, 1.0, 1.0], [160, 160, 160], 4, 4, 2.0, 32, 320, 1e9)
    large = configure([1.0, 1.0, 1.0], [160, 160, 160], 4, 4, 8.0, 32, 320, 1e9)
    for config in (small, large):
        memory = estimate_memory(
            config["patch_size"],
            config["strides"],
            config["kernel_size"],
            config["filters"],
            4,
            4,
            config["batch_size"],
        )
        assert memory <= config["memory_budget_gb"] * 1024**3 and config["batch_size"] >= 2
    assert np.prod(large["patch_size"]) > np.prod(small["patch_size"])


# --- the plan ---------------------------------------------------------------------------------------------------


def test_plan_takes_classes_channels_and_spacing_from_the_dataset(tmp_path, nnunet_root):
    plan = plan_dataset(nnunet_root, tmp_path / "plan.json", progress=False)
    assert load_plan(tmp_path / "plan.json") == json.loads(json.dumps(plan))
    assert plan["num_classes"] == 3 and plan["class_names"] == ["background", "organ", "lesion"]
    assert [c["name"] for c in plan["channels"]] == ["T2", "ADC"]
    assert plan["spatial_dims"] == 3 and plan["orientation"] == "RAS"
    # independent: the header zooms (the synthetic affines are diagonal, so RAS axes are the file axes)
    zooms = [nib.load(nnunet_root / f"labelsTr/mri_{i:03d}.nii.gz").header.get_zooms() for i in range(5)]
    assert plan["target_spacing"] == pytest.approx(np.median(zooms, axis=0), rel=1e-5)
    for name in ("gpu", "cpu"):
        config = plan["configurations"][name]
        assert len(config["patch_size"]) == 3 and len(config["strides"]) == len(config["filters"])
    summary = plan_summary(plan)
    assert "3 training" not in summary and "5 training cases" in summary
    assert "channel 1 ADC: z-score per image" in summary and "gpu: patch" in summary and "cpu: patch" in summary


def test_fingerprint_samples_intensities_but_reads_every_header(nnunet_root):
    fingerprint = extract_fingerprint(read_user_dataset(nnunet_root), max_cases=2, progress=False)
    assert len(fingerprint["spacings"]) == 5 and len(fingerprint["sampled_cases"]) == 2
    assert len(fingerprint["shapes_after_crop"]) == 2
    assert sum(fingerprint["class_fraction"].values()) == pytest.approx(1.0)


def test_msd_4d_and_png_datasets_are_planned(tmp_path):
    msd = plan_dataset(make_msd(tmp_path / "msd", cases=3, size=20, channels=("FLAIR", "T1")), None, progress=False)
    assert [c["name"] for c in msd["channels"]] == ["FLAIR", "T1"] and msd["dataset"]["layout"] == "msd"
    png = make_nnunet(tmp_path / "png", cases=3, test_cases=0, size=40, file_ending=".png", spatial_dims=2)
    plan = plan_dataset(png, None, progress=False)
    assert plan["spatial_dims"] == 2 and plan["orientation"] == "RA"
    assert len(plan["configurations"]["cpu"]["patch_size"]) == 2


def test_2d_nifti_with_a_singleton_axis_is_planned_as_2d(tmp_path):
    root = make_nnunet(tmp_path / "d", cases=3, test_cases=0, size=32, spatial_dims=2)
    plan = plan_dataset(root, None, progress=False)
    assert plan["squeeze_axis"] == 2 and plan["spatial_dims"] == 2
    assert len(plan["configurations"]["gpu"]["patch_size"]) == 2


def test_label_value_outside_labels_is_named_with_the_file_and_field(tmp_path, nnunet_root):
    root = shutil.copytree(nnunet_root, tmp_path / "d")
    path = root / "labelsTr" / "mri_002.nii.gz"
    image = nib.load(path)
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, image.affine), path)
    with raises_naming(ValueError, str(path), "[7]", "'labels'", "dataset.json"):
        plan_dataset(root, None, progress=False)


def test_plan_of_another_dataset_is_refused_naming_both(tmp_path, nnunet_root):
    other = make_nnunet(tmp_path / "other", cases=2, test_cases=0, size=16)
    plan_file = tmp_path / "plan.json"
    assert ensure_plan(plan_file, nnunet_root)["dataset"]["num_training"] == 5  # planned on first use
    with raises_naming(ValueError, str(plan_file), str(other)):
        ensure_plan(plan_file, other)


def test_make_plan_masks_z_scoring_to_the_non_zero_region_when_cropping_removes_much(nnunet_root):
    dataset = read_user_dataset(nnunet_root)
    fingerprint = extract_fingerprint(dataset, progress=False)
    fingerprint["median_relative_size_after_crop"] = 0.5  # as BraTS: brains in a zero background
    assert all(c["use_nonzero_mask"] for c in make_plan(dataset, fingerprint)["channels"])


# --- the command line ---------------------------------------------------------------------------------------------


def test_medseg_plan_writes_the_plan_and_prints_its_summary(tmp_path, nnunet_root, capsys):
    from medseg.cli import main

    assert main(["plan", str(nnunet_root), "--out", str(tmp_path / "p" / "plan.json")]) == 0
    assert load_plan(tmp_path / "p" / "plan.json")["num_classes"] == 3
    out = capsys.readouterr().out
    assert "target spacing" in out and "gpu: patch" in out and "medseg train generic_3d" in out


def test_medseg_plan_names_the_missing_field_in_one_line(tmp_path, nnunet_root, capsys):
    from medseg.cli import main

    root = shutil.copytree(nnunet_root, tmp_path / "d")
    data = json.loads((root / "dataset.json").read_text())
    del data["file_ending"]
    (root / "dataset.json").write_text(json.dumps(data))
    assert main(["plan", str(root), "--out", str(tmp_path / "plan.json")]) == 2
    error = capsys.readouterr().err
    assert "'file_ending'" in error and str(root / "dataset.json") in error and "Traceback" not in error
    assert not (tmp_path / "plan.json").exists()
