"""Training runs that survive faults: a kill during a save, broken checkpoints, two runs on one folder, a changed
config, and a resume that continues exactly where the run stopped (synapse_unet3d at CPU size)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.bundle import run

from medseg.bundles import CPU_UNET3D
from medseg.checkpoint import epoch_checkpoints

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "synapse_unet3d" / "configs"
#: 2 training cases, batch 2: one iteration per epoch; validation (2 cases) every second epoch
SMALL = {**CPU_UNET3D, "val_interval": 2}


def train(bundle_root: Path, dataset: Path, *overlays: str, **overrides) -> None:
    """The bundle through ``monai.bundle.run`` (``logging_file=False`` keeps pytest's log capture)."""
    run(
        config_file=[str(CONFIGS / "train.json"), *(str(ROOT / "configs" / "losses" / f"{o}.json") for o in overlays)],
        logging_file=False,
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset),
        **{**SMALL, **overrides},
    )


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def error_chain(error: BaseException) -> str:
    """MONAI's config parser wraps errors: the user reads the whole chain."""
    chain = []
    while error is not None:
        chain.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(chain)


def test_two_epochs_resumed_for_two_more_equal_four_uninterrupted(tmp_path, synthetic_btcv):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, synthetic_btcv, max_epochs=4)
    train(resumed, synthetic_btcv, max_epochs=2)
    train(resumed, synthetic_btcv, max_epochs=4)  # resumes after epoch 2: random crops and flips continue
    a, b = (load(epoch_checkpoints(r / "models")[0]) for r in (straight, resumed))
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 4
    for key in a["network"]:
        assert torch.equal(a["network"][key], b["network"][key]), key
    for index, moments in a["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg"], b["optimizer"]["state"][index]["exp_avg"])
    best_a, best_b = load(straight / "models" / "model.pt"), load(resumed / "models" / "model.pt")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_resume_falls_back_past_broken_checkpoints_and_says_which_it_took(tmp_path, synthetic_btcv, caplog):
    train(tmp_path, synthetic_btcv, max_epochs=2)
    models = tmp_path / "models"
    good = models / "last_checkpoint_epoch=2.pt"
    data = good.read_bytes()
    (models / "last_checkpoint_epoch=3.pt").write_bytes(data[: len(data) // 2])  # a save cut short
    (models / "last_checkpoint_epoch=4.pt").write_bytes(b"")  # a file created, nothing written
    with caplog.at_level(logging.INFO):
        train(tmp_path, synthetic_btcv, max_epochs=3)
    assert "skipping checkpoint" in caplog.text and "last_checkpoint_epoch=4.pt" in caplog.text
    assert f"resuming from {good}" in caplog.text
    resumed = load(models / "last_checkpoint_epoch=3.pt")  # rewritten whole by the resumed run
    assert resumed["trainer"]["iteration"] == 3


def test_a_second_run_on_a_folder_in_use_refuses_before_training(tmp_path, synthetic_btcv):
    owner = os.getppid()  # a live process other than this one
    start = Path(f"/proc/{owner}/stat").read_text().rsplit(")", 1)[1].split()[19] if sys.platform == "linux" else None
    lock = {"pid": owner, "host": socket.gethostname(), "started": "2026-01-01T00:00:00", "process_start": start}
    (tmp_path / "run.lock").write_text(json.dumps(lock))
    with pytest.raises(Exception) as info:
        train(tmp_path, synthetic_btcv, max_epochs=1)
    message = error_chain(info.value)
    assert f"RunFolderError: {tmp_path} is in use by another run (pid {owner}" in message
    assert "--bundle-root" in message
    assert not epoch_checkpoints(tmp_path / "models")  # nothing trained
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == owner  # the owner's lock is left alone


def test_resume_with_another_loss_refuses_and_no_resume_moves_the_earlier_run_aside(tmp_path, synthetic_btcv):
    train(tmp_path, synthetic_btcv, max_epochs=1)
    first = (tmp_path / "models" / "last_checkpoint_epoch=1.pt").read_bytes()
    first_events = sorted(p.name for p in (tmp_path / "eval").glob("events.out.tfevents.*"))
    assert first_events
    with pytest.raises(Exception) as info:
        train(tmp_path, synthetic_btcv, "dice", max_epochs=2)
    message = error_chain(info.value)
    assert "holds a run with another config, so it is not resumed" in message
    assert 'loss_weights: {"ce": 0.5, "dice": 0.5} -> {"dice": 1.0}' in message
    assert "--bundle-root" in message and "--no-resume" in message
    assert (tmp_path / "models" / "last_checkpoint_epoch=1.pt").read_bytes() == first  # untouched
    assert not (tmp_path / "run.lock").exists()  # the refused run let go of the folder

    train(tmp_path, synthetic_btcv, "dice", max_epochs=1, resume=False)
    (aside,) = (tmp_path / "models").glob("replaced-*")
    assert (aside / "last_checkpoint_epoch=1.pt").read_bytes() == first
    # the first run's TensorBoard events moved aside too, so the new run's curves start alone in eval/
    (events_aside,) = (tmp_path / "eval").glob("replaced-*")
    assert events_aside.name == aside.name
    assert sorted(p.name for p in events_aside.glob("events.out.tfevents.*")) == first_events
    second_events = sorted(p.name for p in (tmp_path / "eval").glob("events.out.tfevents.*"))
    assert second_events and not set(second_events) & set(first_events)
    assert json.loads((aside / "run_config.json").read_text())["config"]["loss_weights"] == {"ce": 0.5, "dice": 0.5}
    record = json.loads((tmp_path / "models" / "run_config.json").read_text())
    assert record["config"]["loss_weights"] == {"dice": 1.0}
    assert load(tmp_path / "models" / "last_checkpoint_epoch=1.pt")["trainer"]["iteration"] == 1


#: the training subprocess: its torch.save writes half of the named checkpoint, then hangs (until it is killed)
CHILD = """
import io, json, os, sys, time
import torch

real_save = torch.save

def save_and_hang(obj, file, *args, **kwargs):
    name = os.path.basename(str(getattr(file, "name", file)))
    if not name.startswith(os.environ["STALL_ON"]):
        return real_save(obj, file, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    if hasattr(file, "write"):
        file.write(half)
        file.flush()
    else:
        with open(file, "wb") as out:
            out.write(half)
    open(os.environ["STALLED"], "w").close()
    time.sleep(600)

torch.save = save_and_hang
from monai.bundle import run
run(**json.loads(sys.argv[1]))
"""


@pytest.mark.slow
def test_a_run_killed_while_saving_resumes_and_finishes(tmp_path, synthetic_btcv, caplog):
    root, stalled = tmp_path / "run", tmp_path / "stalled"
    settings = {**SMALL, "max_epochs": 3, "bundle_root": str(root), "dataset_dir": str(synthetic_btcv)}
    args = {"config_file": str(CONFIGS / "train.json"), "logging_file": False, **settings}
    env = {**os.environ, "STALL_ON": "last_checkpoint_epoch=2.pt", "STALLED": str(stalled)}
    with open(tmp_path / "child.log", "w") as log:
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 300
        while not stalled.exists():
            assert child.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the training subprocess never reached the epoch-2 save"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)  # in the middle of writing last_checkpoint_epoch=2.pt
    finally:
        child.kill()
        child.wait()
    models = root / "models"
    assert [p.name for p in epoch_checkpoints(models)] == ["last_checkpoint_epoch=1.pt"]  # epoch 1 kept whole
    assert load(models / "last_checkpoint_epoch=1.pt")["trainer"]["iteration"] == 1
    assert list(models.glob("*.partial")) and (root / "run.lock").exists()  # what the kill left

    with caplog.at_level(logging.INFO):
        run(config_file=str(CONFIGS / "train.json"), logging_file=False, **settings)
    assert f"from pid {child.pid}, which is gone" in caplog.text
    assert f"resuming from {models / 'last_checkpoint_epoch=1.pt'}" in caplog.text
    final = load(epoch_checkpoints(models)[0])
    assert final["trainer"]["iteration"] == 3
    assert not list(models.glob("*.partial")) and not (root / "run.lock").exists()


TRANSUNET = ROOT / "bundles" / "synapse_transunet" / "configs" / "train.json"
#: TransUNet.tiny on 16×16 slices, 2 iterations per epoch (as in test_synapse_transunet.py)
TRANSUNET_TINY = {"network_def#_target_": "medseg.networks.TransUNet.tiny", "num_workers": 0, "batch_size": 8,
                  "sw_batch_size": 8, "roi_size": [16, 16], "amp": False}  # fmt: skip


def test_transunet_writes_its_last_epoch_model_only_when_training_completes(tmp_path, synthetic_transunet, monkeypatch):
    from medseg.engine import PrepareBatchWithAux

    def train_transunet(**overrides):
        run(config_file=str(TRANSUNET), logging_file=False, bundle_root=str(tmp_path),
            dataset_dir=str(synthetic_transunet), **TRANSUNET_TINY, **overrides)  # fmt: skip

    prepare, batches = PrepareBatchWithAux.__call__, []

    def crash_in_epoch_2(self, *args, **kwargs):
        batches.append(1)
        if len(batches) == 3:
            raise RuntimeError("CUDA out of memory")
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(PrepareBatchWithAux, "__call__", crash_in_epoch_2)
    # without StatsHandler, whose own exception handler (attached first) re-raises before MONAI's saver can save
    quiet = [{"_target_": "medseg.console.EpochSummary"}]
    with pytest.raises(Exception) as info:
        train_transunet(max_epochs=2, **{"train#handlers": quiet})
    assert "CUDA out of memory" in error_chain(info.value)
    models = tmp_path / "models"
    assert [p.name for p in epoch_checkpoints(models)] == ["last_checkpoint_epoch=1.pt"]
    assert not (models / "model.pt").exists()  # MONAI's save_final wrote epoch 1's weights here: "final" at a glance

    monkeypatch.undo()
    train_transunet(max_epochs=2, **{"train#handlers": quiet})  # resumes after epoch 1 and completes
    last = load(epoch_checkpoints(models)[0])
    assert last["trainer"]["iteration"] == 4  # 2 epochs of 2
    final = load(models / "model.pt")
    assert final.keys() == last["network"].keys()
    assert all(torch.equal(final[k], last["network"][k]) for k in final)


def test_medseg_train_writes_under_runs_bundle_loss_and_says_so(tmp_path, synthetic_btcv, monkeypatch, capsys):
    from medseg.cli import main

    monkeypatch.chdir(tmp_path)
    overrides = [f"{k}={json.dumps(v)}" for k, v in SMALL.items()]
    status = main(["train", "synapse_unet3d", "--loss", "dice", "--dataset-dir", str(synthetic_btcv),
                   "--max-epochs", "1", "--override", *overrides])  # fmt: skip
    assert status == 0
    assert "run folder: runs/synapse_unet3d-dice" in capsys.readouterr().out
    folder = tmp_path / "runs" / "synapse_unet3d-dice"
    assert load(epoch_checkpoints(folder / "models")[0])["trainer"]["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing else in the working folder
    shutil.rmtree(folder)


def initialize_on_ranks(bundle: str, world_size: int, monkeypatch, **overrides):
    """Evaluate ``train.json`` + ``multi_gpu_train.json``'s ``initialize`` as rank 0 of ``world_size`` processes
    (``torch.distributed`` stubbed: no GPU, no process group); returns the parser."""
    import torch.distributed as dist
    from monai.bundle import ConfigParser

    for name, value in {"is_initialized": True, "get_world_size": world_size, "get_rank": 0, "barrier": None}.items():
        monkeypatch.setattr(dist, name, lambda *args, value=value, **kwargs: value)
    monkeypatch.setenv("LOCAL_RANK", "0")
    configs = ROOT / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "multi_gpu_train.json")])
    parser.update(overrides)
    parser.get_parsed_content("initialize")
    return parser


@pytest.fixture(scope="module")
def small_user_dataset(tmp_path_factory):
    """nnU-Net layout, 4 training cases: val_fraction 0.2 holds out 1."""
    from medseg.data.synthetic_mri import make_nnunet

    return make_nnunet(tmp_path_factory.mktemp("user4"), cases=4, test_cases=1, size=12, seed=0)


@pytest.mark.parametrize(
    ("bundle", "dataset", "settings", "way"),
    [
        ("synapse_unet3d", "synthetic_btcv", {}, "val_fraction="),
        ("cityscapes_2d", "synthetic_cityscapes", {}, "val_fraction="),
        ("generic_3d", "small_user_dataset", {}, "val_fraction=0.5 or more (now 0.2)"),
        ("generic_3d", "small_user_dataset", {"fold": 0, "n_folds": 4}, "n_folds=2 or fewer (now 4)"),
    ],
)
def test_more_gpus_than_validation_cases_is_refused_before_training(
    bundle, dataset, settings, way, tmp_path, monkeypatch, request
):
    from monai.bundle import ConfigParser
    from monai.data import DistributedSampler

    paths = {"bundle_root": str(tmp_path), "dataset_dir": str(request.getfixturevalue(dataset)), **settings}
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "train.json"))
    parser.update(paths)
    n_val, n_train = (len(parser.get_parsed_content(f"{s}#datalist")) for s in ("validate", "train"))
    ranks = n_val + 1
    with pytest.raises(ValueError, match="less than the number of participating ranks"):  # what MONAI would say
        DistributedSampler(list(range(n_val)), even_divisible=False, num_replicas=ranks, rank=0)

    with pytest.raises(Exception) as info:
        initialize_on_ranks(bundle, ranks, monkeypatch, **paths)
    message = error_chain(info.value)
    case = "case" if n_val == 1 else "cases"
    expected = f"{ranks} processes (GPUs) but {n_val} validation {case} (of {n_val + n_train} training cases)"
    assert f"UserError: {expected}" in message
    assert f"torchrun --nproc_per_node={n_val}" in message and way in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before the run folder was opened


def test_as_many_gpus_as_validation_cases_pass_the_check(tmp_path, synthetic_btcv, monkeypatch):
    paths = {"bundle_root": str(tmp_path), "dataset_dir": str(synthetic_btcv), **SMALL}
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update(paths)
    ranks = len(parser.get_parsed_content("validate#datalist"))
    parser = initialize_on_ranks("synapse_unet3d", ranks, monkeypatch, **paths)
    assert (tmp_path / "run.lock").is_file()  # initialize went on to open the run folder
    parser.get_parsed_content("run_folder").close()
