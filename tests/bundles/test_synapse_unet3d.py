"""The synapse_unet3d bundle trains, resumes, evaluates and infers on synthetic BTCV through monai.bundle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, run, verify_net_in_out

from tests._sizes import TINY_UNET3D

from ._common import MANDATORY_METADATA, last_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "synapse_unet3d"
CONFIGS = BUNDLE / "configs"
LOSS_OVERLAYS = sorted((ROOT / "configs" / "losses").glob("*.json"))

#: CPU-test size: a small UNet on 16³ patches of volumes resampled to 12 × 12 × 24 mm voxels
TINY = TINY_UNET3D


def train(bundle_root: Path, dataset: Path, *extra_configs: Path, **overrides):
    config_files = [str(CONFIGS / "train.json"), *map(str, extra_configs)]
    run(
        config_file=config_files,
        logging_file=str(CONFIGS / "logging.conf"),
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset),
        **{**TINY, **overrides},
    )


def test_train_then_evaluate_then_infer(tmp_path, synthetic_btcv):
    train(tmp_path, synthetic_btcv)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert last_checkpoint(tmp_path)["trainer"]["epoch"] == 1

    run(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        bundle_root=str(tmp_path),
        dataset_dir=str(synthetic_btcv),
        **TINY,
    )
    raw = (tmp_path / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(raw) == 1 + 2  # a header and the two synthetic test cases

    out = tmp_path / "pred"
    run(
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(tmp_path),
        dataset_dir=str(synthetic_btcv),
        output_dir=str(out),
        roi_size=TINY["roi_size"],
        pixdim=TINY["pixdim"],
        **{k: v for k, v in TINY.items() if k.startswith("network_def")},
    )
    predictions = sorted(out.glob("*_seg.nii.gz"))
    assert len(predictions) == 2
    for pred in predictions:
        source = synthetic_btcv / "RawData" / "Training" / "img" / pred.name.replace("_seg", "")
        pred_img, src_img = nib.load(pred), nib.load(source)
        assert pred_img.shape == src_img.shape  # back in the input's grid
        assert np.allclose(pred_img.affine, src_img.affine, atol=1e-4)
        assert set(np.unique(np.asarray(pred_img.dataobj))) <= set(range(9))


def test_interrupted_run_resumes_to_the_same_epoch_and_optimizer_steps(tmp_path, synthetic_btcv):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, synthetic_btcv, max_epochs=2)
    train(resumed, synthetic_btcv, max_epochs=1)  # "interrupted" after epoch 1
    train(resumed, synthetic_btcv, max_epochs=2)  # picks up the last checkpoint
    a, b = last_checkpoint(straight), last_checkpoint(resumed)
    assert a["trainer"]["epoch"] == b["trainer"]["epoch"] == 2
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"]
    steps = [{float(s["step"]) for s in ckpt["optimizer"]["state"].values()} for ckpt in (a, b)]
    assert steps[0] == steps[1] == {float(a["trainer"]["iteration"])}


def test_metadata_has_every_mandatory_field():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert all(meta.get(k) for k in MANDATORY_METADATA)
    fmt = meta["network_data_format"]
    assert fmt["outputs"]["pred"]["num_channels"] == 9 and len(fmt["outputs"]["pred"]["channel_def"]) == 9
    assert any("Azad" in r for r in meta["references"])


def test_verify_net_in_out_and_ckpt_export(tmp_path):
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "train.json"),
        n=1,
        any=16,
        **{"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2]},
    )
    from monai.networks.nets import UNet

    net = UNet(3, 1, 9, channels=(4, 8, 16), strides=(2, 2), num_res_units=2, norm="batch")
    (tmp_path / "models").mkdir()
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "models" / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "train.json"),
        **{"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2]},
    )
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 1, 16, 16, 16)
    net.eval()
    assert torch.allclose(exported(x), net(x), atol=1e-5)


def assert_raised_because(error: BaseException, pattern: str) -> None:
    """MONAI's config parser wraps errors; the user reads the whole chain, so search all of it."""
    chain = []
    while error is not None:
        chain.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    assert re.search(pattern, "\n".join(chain)), chain


def test_unknown_loss_name_is_a_clear_error(tmp_path, synthetic_btcv):
    with pytest.raises(Exception) as info:
        train(tmp_path, synthetic_btcv, loss_weights={"dcie": 1.0}, loss_kwargs={})
    assert_raised_because(info.value, r"ValueError: .*unknown loss 'dcie'; did you mean dpce, dice")


def test_missing_dataset_dir_is_a_clear_error(tmp_path):
    with pytest.raises(Exception) as info:
        train(tmp_path, tmp_path / "does_not_exist")
    assert_raised_because(info.value, r"FileNotFoundError: .*does_not_exist")


def test_network_with_wrong_output_channels_is_a_clear_error(tmp_path, synthetic_btcv):
    with pytest.raises(Exception) as info:
        train(tmp_path, synthetic_btcv, **{"network_def#out_channels": 5})
    assert_raised_because(info.value, "ValueError: the network outputs 5 channels but num_classes is 9")


@pytest.mark.slow
@pytest.mark.parametrize("overlay", LOSS_OVERLAYS, ids=[p.stem for p in LOSS_OVERLAYS])
def test_every_loss_overlay_trains_one_iteration(tmp_path, synthetic_btcv, overlay):
    train(tmp_path, synthetic_btcv, overlay, val_interval=100, **{"train#dataset#data": "$@train#datalist[:1]"})
    assert last_checkpoint(tmp_path)["trainer"]["iteration"] == 1


@pytest.mark.slow
def test_multi_gpu_config_trains_with_two_gloo_processes_on_cpu(tmp_path, synthetic_btcv):
    import subprocess
    import sys

    overrides = []
    # 2 validation cases, one per rank (DistributedSampler cannot share one case between 2 ranks), 1 training case
    settings = {**TINY, "bundle_root": str(tmp_path), "dataset_dir": str(synthetic_btcv), "val_fraction": 0.6}
    for key, value in settings.items():
        overrides += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    files = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    command += ["-m", "monai.bundle", "run", "--config_file", files, *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = last_checkpoint(tmp_path)  # written by rank 0 only
    assert ckpt["trainer"]["epoch"] == 1
    assert ckpt["trainer"]["epoch_length"] == 1  # the training case padded to 2 ranks: one batch each
