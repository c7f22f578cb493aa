"""One run per folder: the lock, the run's config beside its checkpoints, and what a fresh start does."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet

from medseg.console import UserError
from medseg.data.splits import kfold_split, train_val_split
from medseg.engine import rebalance_schedule
from medseg.runs import (
    LOCK_NAME,
    RunFolder,
    RunFolderError,
    check_validation_cases_per_rank,
    config_hash,
    default_run_folder,
    describe,
)
from medseg.transforms import DistanceMapd


def process_start(pid: int) -> str | None:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def write_lock(root, pid: int, host: str | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": "then", "process_start": process_start(pid)}
    (root / "run.lock").write_text(json.dumps(owner))


def folder(tmp_path, config=None, resume=True) -> RunFolder:
    return RunFolder(tmp_path, tmp_path / "models", config if config is not None else {"loss": "dice"}, resume)


def test_a_folder_locked_by_a_live_process_refuses(tmp_path):
    write_lock(tmp_path, os.getppid())
    with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getppid()} on"):
        folder(tmp_path).open()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getppid()


def test_a_folder_locked_on_another_machine_refuses(tmp_path):
    write_lock(tmp_path, 12345, host="elsewhere")
    with pytest.raises(RunFolderError, match=r"a run on another machine .*delete .*run\.lock"):
        folder(tmp_path).open()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog):
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_lock(tmp_path, gone.pid)
    with caplog.at_level(logging.INFO):
        run = folder(tmp_path).open()
    assert f"pid {gone.pid}, which is gone" in caplog.text
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    run.close()
    assert not (tmp_path / "run.lock").exists()


def test_a_lock_this_process_left_behind_is_taken_over(tmp_path):
    folder(tmp_path).open()  # a run that raised before closing
    folder(tmp_path).open().close()
    assert not (tmp_path / "run.lock").exists()


def test_an_unreadable_old_lock_is_taken_over(tmp_path):
    (tmp_path / "run.lock").write_text("{not json")
    os.utime(tmp_path / "run.lock", (0, 0))
    folder(tmp_path).open().close()


def fake_checkpoint(tmp_path, epoch: int = 1) -> None:
    torch.save({"trainer": {"epoch": epoch}}, tmp_path / "models" / f"last_checkpoint_epoch={epoch}.pt")


def test_resume_needs_the_same_config(tmp_path):
    folder(tmp_path, {"loss": "dice", "lr": 0.01}).open().close()
    fake_checkpoint(tmp_path)
    folder(tmp_path, {"loss": "dice", "lr": 0.01}).open().close()  # same run: resumes
    with pytest.raises(RunFolderError) as info:
        folder(tmp_path, {"loss": "focal", "lr": 0.01}).open()
    assert 'loss: "dice" -> "focal"' in str(info.value) and "lr" not in str(info.value).split("(")[1].split(")")[0]
    assert "--bundle-root" in str(info.value) and "--no-resume" in str(info.value)
    assert not (tmp_path / "run.lock").exists()


def test_checkpoints_without_a_recorded_config_are_not_resumed(tmp_path):
    (tmp_path / "models").mkdir(parents=True)
    fake_checkpoint(tmp_path)
    with pytest.raises(RunFolderError, match=r"no run_config\.json"):
        folder(tmp_path).open()


def test_a_fresh_start_moves_the_earlier_run_aside_and_clears_unfinished_writes(tmp_path):
    folder(tmp_path, {"loss": "dice"}).open().close()
    fake_checkpoint(tmp_path)
    (tmp_path / "models" / "model.pt").write_bytes(b"best")
    (tmp_path / "models" / "model.pt.json").write_text("{}")
    (tmp_path / "models" / "last_checkpoint_epoch=2.pt.123.ab12.partial").write_bytes(b"half")
    folder(tmp_path, {"loss": "focal"}, resume=False).open().close()
    (aside,) = (tmp_path / "models").glob("replaced-*")
    moved = ["last_checkpoint_epoch=1.pt", "model.pt", "model.pt.json", "run_config.json"]
    assert sorted(p.name for p in aside.iterdir()) == moved
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [aside.name, "run_config.json"]
    assert json.loads((tmp_path / "models" / "run_config.json").read_text())["config"] == {"loss": "focal"}


def test_a_fresh_start_moves_the_earlier_runs_logs_aside_and_a_resume_keeps_them(tmp_path):
    eval_dir = tmp_path / "eval"

    def logged_run(config, resume=True) -> RunFolder:
        return RunFolder(tmp_path, tmp_path / "models", config, resume, log_dirs=[eval_dir])

    logged_run({"loss": "dice"}).open().close()  # the first run: nothing to move, eval/ need not exist
    assert not eval_dir.exists() or not any(eval_dir.iterdir())
    eval_dir.mkdir(exist_ok=True)
    (eval_dir / "events.out.tfevents.1.host").write_bytes(b"dice curves")
    (eval_dir / "val_mean_dice_raw.csv").write_text("filename,mean\n")
    fake_checkpoint(tmp_path)
    logged_run({"loss": "dice"}).open().close()  # resumes: its curves continue in the same events folder
    assert sorted(p.name for p in eval_dir.iterdir()) == ["events.out.tfevents.1.host", "val_mean_dice_raw.csv"]

    logged_run({"loss": "focal"}, resume=False).open().close()
    (ckpt_aside,) = (tmp_path / "models").glob("replaced-*")
    (aside,) = eval_dir.iterdir()
    assert aside.name == ckpt_aside.name  # one time stamp for the checkpoints and the logs they go with
    assert sorted(p.name for p in aside.iterdir()) == ["events.out.tfevents.1.host", "val_mean_dice_raw.csv"]
    assert (aside / "events.out.tfevents.1.host").read_bytes() == b"dice curves"

    (eval_dir / "events.out.tfevents.2.host").write_bytes(b"focal curves")
    fake_checkpoint(tmp_path)
    logged_run({"loss": "tversky"}, resume=False).open().close()  # another fresh start: a folder of its own
    asides = sorted(eval_dir.iterdir())
    assert len(asides) == 2 and all(p.name.startswith("replaced-") for p in asides)
    assert [q.name for q in asides[1].iterdir()] == ["events.out.tfevents.2.host"]
    assert len(list((tmp_path / "models").glob("replaced-*"))) == 2


def test_two_fresh_starts_in_one_second_keep_both_earlier_runs(tmp_path, monkeypatch):
    import medseg.runs

    class FrozenClock(medseg.runs.datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 1, 12, 0, 0)

    monkeypatch.setattr(medseg.runs.datetime, "datetime", FrozenClock)
    for loss in ("dice", "focal", "tversky"):
        if (tmp_path / "models").exists():
            fake_checkpoint(tmp_path)
        folder(tmp_path, {"loss": loss}, resume=False).open().close()
    asides = sorted((tmp_path / "models").glob("replaced-*"))
    assert [p.name for p in asides] == ["replaced-20260101-120000", "replaced-20260101-120000-2"]
    losses = [json.loads((p / "run_config.json").read_text())["config"]["loss"] for p in asides]
    assert losses == ["dice", "focal"]


@pytest.mark.parametrize("log_dir", [".", "..", "models"])
def test_a_log_folder_holding_the_run_or_its_checkpoints_is_refused(tmp_path, log_dir):
    root = tmp_path / "run"
    run = RunFolder(root, root / "models", {"loss": "dice"}, resume=False, log_dirs=[root / log_dir])
    with pytest.raises(RunFolderError, match=r"the log folder .* holds the (run|checkpoint) folder .*output_dir"):
        run.open()
    assert not (root / "run.lock").exists()


def test_describe_tells_configs_apart_by_what_they_train(tmp_path, monkeypatch):
    def unet(channels):
        return UNet(3, 1, 9, channels=channels, strides=(2, 2))

    same = [describe({"network": unet((4, 8, 16)), "schedule": rebalance_schedule("dice", "boundary")}) for _ in "ab"]
    assert config_hash(same[0]) == config_hash(same[1])  # separate objects, one config
    assert " at 0x" not in json.dumps(same[0])
    assert describe(unet((4, 8, 16))) != describe(unet((4, 8, 32)))
    assert describe(rebalance_schedule("dice", "boundary")) != describe(rebalance_schedule("dice", "boundary", 0.02))
    signed, layered = (describe(DistanceMapd("label", mode=m)) for m in ("signed", "unsigned"))
    assert signed != layered
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert describe(["./data", "dice"]) == [str(tmp_path / "data"), "dice"]


def test_medseg_train_folders_are_named_after_bundle_and_loss():
    assert str(default_run_folder("synapse_unet3d", "ce+dice")) == os.path.join("runs", "synapse_unet3d-ce+dice")
    assert default_run_folder("bundles/cityscapes_2d", "/home/me/my_loss.json").name == "cityscapes_2d-my_loss"
    assert default_run_folder("generic_3d", "dice", fold=2).name == "generic_3d-dice-fold2"
    assert default_run_folder("synapse_unet3d", "../../x/evil") == Path("runs") / "synapse_unet3d-evil"


def test_the_lock_a_crashed_run_leaves_in_the_repository_root_is_ignored_by_git():
    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    # a plain `monai.bundle run` uses bundle_root ".": a crash leaves run.lock there
    ignored = subprocess.run(["git", "check-ignore", "-q", LOCK_NAME], cwd=root, check=False)
    assert ignored.returncode == 0, f"{LOCK_NAME} in the repository root is not in .gitignore"


def suggested(message: str, name: str) -> float:
    return float(re.search(rf"{name}=([0-9.]+)", message).group(1))


@pytest.mark.parametrize(("ranks", "cases"), [(4, 10), (8, 30), (3, 7), (2, 4)])
def test_more_ranks_than_validation_cases_names_both_and_a_val_fraction_that_works(ranks, cases):
    train, val = train_val_split(list(range(cases)), 0.2)
    assert len(val) < ranks
    with pytest.raises(UserError) as info:
        check_validation_cases_per_rank(ranks, val, train, val_fraction=0.2)
    message = str(info.value)
    assert message.startswith(f"{ranks} processes (GPUs) but {len(val)} validation case")
    assert f"(of {cases} training cases)" in message and "(now 0.2)" in message
    assert f"run on at most {len(val)} GPU" in message and f"--nproc_per_node={len(val)})" in message
    _, enough = train_val_split(list(range(cases)), suggested(message, "val_fraction"))
    assert len(enough) >= ranks  # the suggested fraction holds out a case per process
    check_validation_cases_per_rank(ranks, enough, range(cases - len(enough)))  # and passes


def test_validation_on_a_fold_suggests_fewer_folds_that_are_large_enough():
    cases = list(range(12))
    train, val = kfold_split(cases, 0, n_folds=5)
    with pytest.raises(UserError, match=r"validate on larger folds: n_folds=3 or fewer \(now 5\)") as info:
        check_validation_cases_per_rank(4, val, train, val_fraction=0.2, n_folds=5)
    assert "val_fraction" not in str(info.value)
    folds = int(suggested(str(info.value), "n_folds"))
    assert min(len(kfold_split(cases, k, folds)[1]) for k in range(folds)) >= 4
    assert min(len(kfold_split(cases, k, folds + 1)[1]) for k in range(folds + 1)) < 4


def test_no_split_of_too_few_cases_can_serve_every_rank():
    with pytest.raises(UserError) as info:
        check_validation_cases_per_rank(8, [0], [1, 2], val_fraction=0.2)
    message = str(info.value)
    assert "run on at most 1 GPU (torchrun --nproc_per_node=1)" in message and "val_fraction" not in message
    with pytest.raises(UserError, match=r"use a dataset with more cases \(this one has 1\)"):
        check_validation_cases_per_rank(2, [], [0])


def test_enough_validation_cases_pass():
    check_validation_cases_per_rank(4, range(4), range(16), val_fraction=0.2)
    check_validation_cases_per_rank(1, [0], [1])
