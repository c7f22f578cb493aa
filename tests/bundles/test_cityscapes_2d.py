"""The cityscapes_2d bundle trains with ignored pixels, resumes, scores mIoU and writes labelIds PNGs."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, run, verify_net_in_out
from monai.data import MetaTensor
from monai.networks.nets import UNet
from PIL import Image

from medseg.data import TRAIN_CLASS_NAMES, cityscapes_datalist, cityscapes_transforms, trainids_to_labelids
from medseg.data.cityscapes import MaskedOneHotd, SaveLabelIdsd

from ._common import MANDATORY_METADATA, TENSOR_FORMAT_KEYS, assert_bundle_properties, last_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "cityscapes_2d" / "configs"
LOSS_OVERLAYS = sorted((ROOT / "configs" / "losses").glob("*.json"))
TINY_UNET = {"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2], "network_def#num_res_units": 0}
#: CPU-test size: the 64×32 synthetic frames resized to 32×16, 16×16 crops and windows, a small UNet;
#: 3 training images in batches of 2 make one epoch of 2 iterations
TINY = {
    "max_epochs": 1,
    "val_interval": 1,
    "num_workers": 0,
    "batch_size": 2,
    "image_size": [16, 32],
    "roi_size": [16, 16],
    "amp": False,
}


def train(
    bundle_root: Path,
    dataset: Path,
    *extra_configs: Path,
    logging_file: str | bool | None = None,
    network: dict = TINY_UNET,
    **overrides,
):
    run(
        config_file=[str(CONFIGS / "train.json"), *map(str, extra_configs)],
        logging_file=logging_file,
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset),
        **{**TINY, **network, **overrides},
    )


def tiny_unet() -> UNet:
    return UNet(2, 3, 19, channels=(4, 8, 16), strides=(2, 2), num_res_units=0, norm="batch")


def sliding_window_by_hand(network: UNet, image: torch.Tensor) -> torch.Tensor:
    """Logits of a (3, 16, 32) frame from 16×16 windows at overlap 0.5 (columns 0, 8, 16), overlaps averaged."""
    logits, counts = torch.zeros(19, 16, 32), torch.zeros(1, 16, 32)
    with torch.no_grad():
        for left in (0, 8, 16):
            logits[:, :, left : left + 16] += network(image[None, :, :, left : left + 16])[0]
            counts[:, :, left : left + 16] += 1
    return logits / counts


def test_train_then_evaluate_then_infer(tmp_path, synthetic_cityscapes):
    train(tmp_path, synthetic_cityscapes)
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "model_final.pt").is_file()  # best and last model
    state = last_checkpoint(tmp_path)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["epoch_length"] == 2

    run(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        bundle_root=str(tmp_path),
        dataset_dir=str(synthetic_cityscapes),
        **TINY,
        **TINY_UNET,
    )
    with open(tmp_path / "eval" / "val_mean_iou_raw.csv") as file:
        iou_rows = {row["filename"]: row for row in csv.DictReader(file)}
    val_items = cityscapes_datalist(synthetic_cityscapes, "val")
    assert sorted(iou_rows) == sorted(item["name"] for item in val_items)

    out = tmp_path / "pred"
    run(
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(tmp_path),
        dataset_dir=str(synthetic_cityscapes),
        output_dir=str(out),
        **{k: TINY[k] for k in ("image_size", "roi_size", "amp")},
        num_workers=0,
        **TINY_UNET,
    )
    network = tiny_unet()
    network.load_state_dict(torch.load(models / "model.pt", weights_only=True))
    network.eval()
    for item in val_items:
        data = cityscapes_transforms(train=False, image_size=(16, 32))(item)
        logits = sliding_window_by_hand(network, data["image"])

        # mIoU at the working resolution by the formula: ignored (255) pixels left out, NaN for absent classes
        pred, label = logits.argmax(0), data["label"][0].long()
        scored = label != 255
        for c in range(19):
            p, g = (pred == c) & scored, (label == c) & scored
            expected = (p & g).sum().item() / (p | g).sum().item() if g.any() else float("nan")
            assert float(iou_rows[item["name"]][f"class{c}"]) == pytest.approx(expected, abs=1e-6, nan_ok=True)

        # the PNG: softmax, bilinear back to the 32×64 frame, argmax, trainIds -> labelIds
        written = np.asarray(Image.open(out / f"{item['name']}_labelIds.png"))
        assert written.shape == (32, 64) and written.dtype == np.uint8
        full = torch.nn.functional.interpolate(logits.softmax(0)[None], size=(32, 64), mode="bilinear")[0]
        assert (written == trainids_to_labelids(full.argmax(0))).mean() > 0.99
    assert len(list(out.glob("*.png"))) == len(val_items)


def test_transunet_override_trains_and_infers(tmp_path, synthetic_cityscapes):
    transunet = [CONFIGS / "network_transunet.json"]
    tiny = {"network_def#_target_": "medseg.networks.TransUNet.tiny"}
    # the 3 images in one batch: a 16×16 crop is 1×1 at the 1/16 bottleneck, where batch norm needs 2 samples
    train(tmp_path, synthetic_cityscapes, *transunet, batch_size=3, network=tiny)
    assert set(torch.load(tmp_path / "models" / "model.pt", weights_only=True)) >= {"position_embedding"}
    run(
        config_file=[str(CONFIGS / "inference.json"), *map(str, transunet)],
        bundle_root=str(tmp_path),
        dataset_dir=str(synthetic_cityscapes),
        num_workers=0,
        **{k: TINY[k] for k in ("image_size", "roi_size", "amp")},
        **tiny,
    )
    written = [np.asarray(Image.open(p)) for p in (tmp_path / "eval").glob("*_labelIds.png")]
    assert len(written) == 1 and written[0].shape == (32, 64)


def test_interrupted_run_resumes_with_optimizer_schedule_and_epoch(tmp_path, synthetic_cityscapes, caplog):
    stop_after_first_epoch = [
        "$[handler.attach(@train#trainer) for handler in @train#checkpointing]",
        "$@train#trainer.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())",
        "$@train#trainer.run()",
    ]
    # logging_file=False: MONAI's logging.conf would replace the handler through which pytest captures the log
    quiet = {"max_epochs": 2, "val_interval": 10, "logging_file": False}
    train(tmp_path, synthetic_cityscapes, run=stop_after_first_epoch, **quiet)
    assert last_checkpoint(tmp_path)["lr_scheduler"]["last_epoch"] == 2
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(tmp_path, synthetic_cityscapes, **quiet)
    assert "resuming from" in caplog.text and "last_checkpoint_epoch=1.pt" in caplog.text
    assert "Epoch[2] Complete" in caplog.text and "Epoch[1] Complete" not in caplog.text
    resumed = last_checkpoint(tmp_path)
    assert resumed["trainer"]["iteration"] == resumed["lr_scheduler"]["last_epoch"] == 4


def test_metadata_has_every_mandatory_field():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert all(meta.get(k) for k in MANDATORY_METADATA)
    assert meta["intended_use"] and meta["data_source"] and meta["changelog"][meta["version"]]
    assert any("Azad" in r and "Loss Functions" in r for r in meta["references"])  # the survey
    assert any("Cityscapes" in r for r in meta["references"])
    for tensor in (meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]):
        assert TENSOR_FORMAT_KEYS <= set(tensor)
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channels == {str(i): name for i, name in enumerate(TRAIN_CLASS_NAMES)}  # the 19 trainIds in order


def test_bundle_properties_are_complete(tmp_path, synthetic_cityscapes):
    assert_bundle_properties(CONFIGS, tmp_path, dataset_dir=str(synthetic_cityscapes), **TINY, **TINY_UNET)


@pytest.mark.parametrize("network", ["unet", "transunet"])
def test_verify_net_in_out(network):
    configs = [str(CONFIGS / "inference.json")]
    tiny = TINY_UNET
    if network == "transunet":  # the TransUNet override, at its CPU-test size
        configs.append(str(CONFIGS / "network_transunet.json"))
        tiny = {"network_def#_target_": "medseg.networks.TransUNet.tiny"}
    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=configs, n=2, **tiny)


def test_ckpt_export(tmp_path):
    net = tiny_unet().eval()
    (tmp_path / "models").mkdir()
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "models" / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        **TINY_UNET,
    )
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 3, 32, 64)  # any multiple of 16: the TorchScript model is scripted, not traced
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x), atol=1e-5, rtol=1e-5)


def test_masked_one_hot_leaves_ignored_pixels_out():
    label = torch.tensor([[[0, 1, 255], [2, 255, 1]]])
    pred = torch.tensor([[[0, 2, 1], [2, 0, 1]]])
    out = MaskedOneHotd(["pred", "label"], num_classes=3)({"pred": pred, "label": label})
    # class 1: predicted at (0, 2) and (1, 2), but (0, 2) is ignored: one hit, one miss (label at (0, 1))
    np.testing.assert_array_equal(out["pred"][1], [[0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(out["label"][1], [[0, 1, 0], [0, 0, 1]])
    assert out["pred"][:, 0, 2].sum() == out["pred"][:, 1, 1].sum() == 0  # all channels zero where ignored
    assert out["pred"].shape == out["label"].shape == (3, 2, 3)
    with pytest.raises(ValueError, match=r"pred holds values \[7\] outside 0..2"):
        MaskedOneHotd(["pred", "label"], num_classes=3)({"pred": torch.full_like(pred, 7), "label": label})


def test_save_label_ids_needs_the_source_name(tmp_path):
    prediction = MetaTensor(torch.zeros(1, 2, 4), meta={"filename_or_obj": "x/aachen_000001_000019_leftImg8bit.png"})
    out = SaveLabelIdsd("pred", tmp_path)({"pred": prediction})
    assert Path(out["pred_path"]) == tmp_path / "aachen_000001_000019_labelIds.png"
    assert (np.asarray(Image.open(out["pred_path"])) == 7).all()  # trainId 0, road, is labelId 7
    with pytest.raises(ValueError, match="no source file name"):
        SaveLabelIdsd("pred", tmp_path)({"pred": torch.zeros(1, 2, 4)})


def test_distance_map_loss_overlay_trains_with_ignored_pixels(tmp_path, synthetic_cityscapes):
    # the boundary loss reads a signed distance map that DistanceMapd computes with ignore_index 255
    train(tmp_path, synthetic_cityscapes, ROOT / "configs" / "losses" / "boundary.json", val_interval=10)
    assert last_checkpoint(tmp_path)["trainer"]["iteration"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("overlay", LOSS_OVERLAYS, ids=[p.stem for p in LOSS_OVERLAYS])
def test_every_loss_overlay_trains_one_iteration(tmp_path, synthetic_cityscapes, overlay):
    train(tmp_path, synthetic_cityscapes, overlay, batch_size=3, val_interval=10)  # the 3 images in one batch
    assert last_checkpoint(tmp_path)["trainer"]["iteration"] == 1


@pytest.mark.slow
def test_multi_gpu_config_trains_with_two_gloo_processes_on_cpu(tmp_path, synthetic_cityscapes):
    settings = {**TINY, **TINY_UNET, "bundle_root": str(tmp_path), "dataset_dir": str(synthetic_cityscapes)}
    # one synthetic val image cannot be shared by 2 ranks: validate on the training images here
    settings["validate#datalist"] = "$medseg.data.cityscapes_datalist(@dataset_dir, 'train')"
    overrides = []
    for key, value in settings.items():
        overrides += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    files = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29535"]
    command += ["-m", "monai.bundle", "run", "--config_file", files, *overrides]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = last_checkpoint(tmp_path)  # written by rank 0 only
    assert state["trainer"]["epoch_length"] == 1  # 3 images padded to 4 over 2 ranks: one batch of 2 each
    assert (tmp_path / "models" / "model.pt").is_file()  # rank 0 validated and kept the best model
