"""The synapse_transunet bundle trains on 2D slices, resumes, evaluates in 3D and infers slice by slice."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ckpt_export, run, verify_net_in_out

from medseg.data import synapse_organ_names
from medseg.networks import TransUNet

from ._common import MANDATORY_METADATA, TENSOR_FORMAT_KEYS, assert_bundle_properties, last_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "synapse_transunet" / "configs"
LOSS_OVERLAYS = sorted((ROOT / "configs" / "losses").glob("*.json"))
TINY_NETWORK = {"network_def#_target_": "medseg.networks.TransUNet.tiny"}
#: CPU-test size: TransUNet.tiny on 16×16 slices (the 32×32 synthetic slices are zoomed to it and back);
#: 2 training volumes of 8 slices in batches of 8 make one epoch of 2 iterations
TINY = {
    "max_epochs": 1,
    "val_interval": 1,
    "num_workers": 0,
    "batch_size": 8,
    "sw_batch_size": 8,
    "roi_size": [16, 16],
    "amp": False,
    **TINY_NETWORK,
}


def train(bundle_root: Path, dataset: Path, *extra_configs: Path, logging_file: str | bool | None = None, **overrides):
    run(
        config_file=[str(CONFIGS / "train.json"), *map(str, extra_configs)],
        logging_file=logging_file,
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset),
        **{**TINY, **overrides},
    )


def test_train_then_evaluate_then_infer(tmp_path, synthetic_transunet):
    train(tmp_path, synthetic_transunet)
    models = tmp_path / "models"
    # the TransUNet protocol keeps the last epoch: no model selection, so model.pt is the final weights
    assert (models / "model.pt").is_file() and not (models / "model_final.pt").exists()
    state = last_checkpoint(tmp_path)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["epoch_length"] == 2
    assert set(state) == {"network", "optimizer", "lr_scheduler", "loss", "trainer", "random_state"}

    run(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        bundle_root=str(tmp_path),
        dataset_dir=str(synthetic_transunet),
        **TINY,
    )
    with open(tmp_path / "eval" / "val_mean_dice_raw.csv") as file:
        dice_rows = {row["filename"]: row for row in csv.DictReader(file)}
    test_cases = (synthetic_transunet / "lists" / "lists_Synapse" / "test_vol.txt").read_text().split()
    assert sorted(dice_rows) == sorted(test_cases) and len(test_cases) == 2

    out = tmp_path / "pred"
    run(
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(tmp_path),
        dataset_dir=str(synthetic_transunet),
        output_dir=str(out),
        **{k: TINY[k] for k in ("roi_size", "num_workers", "sw_batch_size", "amp")},
        **TINY_NETWORK,
    )
    network = TransUNet.tiny(2, 1, 9, img_size=16)
    network.load_state_dict(torch.load(models / "model.pt", weights_only=True))
    network.eval()
    for case in test_cases:
        with h5py.File(synthetic_transunet / "test_vol_h5" / f"{case}.npy.h5") as volume:
            image, label = volume["image"][()], volume["label"][()]
        pred_nifti, gt_nifti = nib.load(out / f"{case}_pred.nii.gz"), nib.load(out / f"{case}_gt.nii.gz")
        pred = np.asarray(pred_nifti.dataobj)
        assert pred.shape == image.shape == (8, 32, 32)  # (D, H, W) as stored, back at the stored size
        np.testing.assert_allclose(pred_nifti.affine, np.eye(4))  # the h5 volume's geometry: none, identity
        np.testing.assert_array_equal(np.asarray(gt_nifti.dataobj), label)

        # TransUNet's test protocol written out by hand: each slice zoomed to 16×16 (bilinear), the argmax
        # zoomed back to 32×32 with nearest neighbours
        with torch.no_grad():
            slices = F.interpolate(torch.from_numpy(image)[:, None], size=(16, 16), mode="bilinear")
            by_hand = network(slices).argmax(1, keepdim=True).float()
            by_hand = F.interpolate(by_hand, size=image.shape[1:], mode="nearest")[:, 0].numpy()
        assert (pred == by_hand).mean() > 0.999

        # the evaluation scores these 3D predictions: Dice per organ by the formula, NaN where the organ is absent
        for organ in range(1, 9):
            p, g = pred == organ, label == organ
            expected = 2 * (p & g).sum() / (p.sum() + g.sum()) if g.any() else float("nan")
            assert float(dice_rows[case][f"class{organ - 1}"]) == pytest.approx(expected, abs=1e-6, nan_ok=True)


def test_interrupted_run_resumes_with_optimizer_schedule_and_epoch(tmp_path, synthetic_transunet, caplog):
    stop_after_first_epoch = [
        "$[handler.attach(@train#trainer) for handler in @train#checkpointing]",
        "$@train#trainer.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())",
        "$@train#trainer.run()",
    ]
    # logging_file=False: MONAI's logging.conf would replace the handler through which pytest captures the log
    quiet = {"max_epochs": 2, "val_interval": 10, "logging_file": False}
    train(tmp_path, synthetic_transunet, run=stop_after_first_epoch, **quiet)
    interrupted = last_checkpoint(tmp_path)
    assert interrupted["trainer"]["iteration"] == 2
    assert interrupted["lr_scheduler"]["last_epoch"] == 2  # one poly step per iteration

    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(tmp_path, synthetic_transunet, **quiet)
    assert "resuming from" in caplog.text and "last_checkpoint_epoch=1.pt" in caplog.text
    assert "Epoch[2] Complete" in caplog.text and "Epoch[1] Complete" not in caplog.text  # epoch 1 is not rerun
    resumed = last_checkpoint(tmp_path)
    assert resumed["trainer"]["iteration"] == 4
    # the schedule continued from the checkpoint: 4 poly steps in all, lr = 0.01·(1 − 4/4)^0.9 = 0
    assert resumed["lr_scheduler"]["last_epoch"] == 4
    assert resumed["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    momentum = resumed["optimizer"]["state"]
    assert set(momentum) == set(resumed["optimizer"]["param_groups"][0]["params"])  # for every parameter


def test_metadata_has_every_mandatory_field():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert all(meta.get(k) for k in MANDATORY_METADATA)
    assert meta["intended_use"] and meta["data_source"] and meta["changelog"][meta["version"]]
    assert any("Azad" in r and "Loss Functions" in r for r in meta["references"])  # the survey
    assert any("TransUNet" in r for r in meta["references"])
    for tensor in (meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]):
        assert TENSOR_FORMAT_KEYS <= set(tensor)
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channels == {"0": "background", **{str(k): v for k, v in synapse_organ_names().items()}}


def test_bundle_properties_are_complete(tmp_path, synthetic_transunet):
    assert_bundle_properties(CONFIGS, tmp_path, dataset_dir=str(synthetic_transunet), **TINY)


def test_verify_net_in_out_and_ckpt_export(tmp_path):
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "train.json"),
        **TINY_NETWORK,
    )
    net = TransUNet.tiny(2, 1, 9, img_size=224).eval()
    (tmp_path / "models").mkdir()
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "models" / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        use_trace=True,  # the weight-standardised convolutions are not scriptable; the input size is fixed
        **TINY_NETWORK,
    )
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x), atol=1e-5, rtol=1e-5)


def test_distance_map_loss_overlay_trains(tmp_path, synthetic_transunet):
    # the boundary loss reads a signed distance map that DistanceMapd adds to the slice transforms
    train(tmp_path, synthetic_transunet, ROOT / "configs" / "losses" / "boundary.json", val_interval=10)
    assert last_checkpoint(tmp_path)["trainer"]["iteration"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("overlay", LOSS_OVERLAYS, ids=[p.stem for p in LOSS_OVERLAYS])
def test_every_loss_overlay_trains_one_iteration(tmp_path, synthetic_transunet, overlay):
    one_batch = {"batch_size": 16, "val_interval": 10}  # the 16 training slices in one batch
    train(tmp_path, synthetic_transunet, overlay, **one_batch)
    assert last_checkpoint(tmp_path)["trainer"]["iteration"] == 1


@pytest.mark.slow
def test_multi_gpu_config_trains_with_two_gloo_processes_on_cpu(tmp_path, synthetic_transunet):
    overrides = []
    for key, value in {**TINY, "bundle_root": str(tmp_path), "dataset_dir": str(synthetic_transunet)}.items():
        overrides += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    files = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534"]
    command += ["-m", "monai.bundle", "run", "--config_file", files, *overrides]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = last_checkpoint(tmp_path)  # written by rank 0 only
    assert state["trainer"]["epoch_length"] == 1  # 16 slices over 2 ranks: one batch of 8 each
    assert state["lr_scheduler"]["last_epoch"] == 1
