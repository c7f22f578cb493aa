"""Checkpoint writes that a failure cannot half-do, resume past broken files, and the random state of a run."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, RandAffined, RandFlipd
from torch import nn

from medseg.checkpoint import (
    AtomicCheckpointSaver,
    RandomStates,
    atomic_save,
    epoch_checkpoints,
    newest_readable_checkpoint,
    random_states,
)


def failing_save(obj, file, *args, **kwargs):
    """A ``torch.save`` that dies halfway: some bytes written, then an error (a full disk, a kill)."""
    file.write(b"half a checkpoint")
    raise OSError("No space left on device")


def test_a_failed_write_leaves_the_previous_file_whole_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    atomic_save({"w": torch.ones(3)}, path)
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"w": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def epochs_engine(net: nn.Module, scores: dict[int, float] | None = None) -> Engine:
    """An engine whose epochs set the network's weight to the epoch number (and the metric to ``scores[epoch]``)."""

    def step(engine, batch):
        with torch.no_grad():
            net.weight.fill_(engine.state.epoch)

    engine = Engine(step)
    if scores is not None:

        @engine.on(Events.EPOCH_COMPLETED)
        def score(engine):
            engine.state.metrics["dice"] = scores[engine.state.epoch]

    return engine


def test_the_previous_epoch_checkpoint_stays_until_the_next_one_is_complete(tmp_path, monkeypatch):
    net = nn.Linear(1, 1, bias=False)
    engine = epochs_engine(net)
    saver = AtomicCheckpointSaver(str(tmp_path), {"net": net}, file_prefix="last", save_interval=1, n_saved=1)
    saver.attach(engine)
    engine.run([0], max_epochs=1)

    fail_at_epoch_2 = epochs_engine(net)
    fail_at_epoch_2.load_state_dict({"epoch": 1, "epoch_length": 1, "max_epochs": 2})
    saver.attach(fail_at_epoch_2)
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        fail_at_epoch_2.run([0])  # ignite asked to remove epoch 1 before this save: it must still be there
    assert [p.name for p in tmp_path.iterdir()] == ["last_net_epoch=1.pt"]
    assert torch.load(tmp_path / "last_net_epoch=1.pt", weights_only=True)["weight"].item() == 1

    monkeypatch.undo()
    retry = epochs_engine(net)  # the same saver, e.g. once disk space is freed
    retry.load_state_dict({"epoch": 1, "epoch_length": 1, "max_epochs": 2})
    saver.attach(retry)
    retry.run([0])
    assert [p.name for p in tmp_path.iterdir()] == ["last_net_epoch=2.pt"]  # n_saved=1, once 2 is whole


def test_a_resumed_run_replaces_the_checkpoints_of_before_the_resume(tmp_path):
    net = nn.Linear(1, 1, bias=False)
    for epoch in (1, 2):
        torch.save(net.state_dict(), tmp_path / f"last_net_epoch={epoch}.pt")
    (tmp_path / "model.pt").write_bytes(b"not an interval checkpoint")
    resumed = epochs_engine(net)
    resumed.load_state_dict({"epoch": 2, "epoch_length": 1, "max_epochs": 3})
    AtomicCheckpointSaver(str(tmp_path), {"net": net}, file_prefix="last", save_interval=1, n_saved=2).attach(resumed)
    resumed.run([0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_net_epoch=2.pt", "last_net_epoch=3.pt", "model.pt"]


def saved_weight(path) -> float:
    return torch.load(path, weights_only=True)["weight"].item()


def best_saver(folder) -> AtomicCheckpointSaver:
    net = nn.Linear(1, 1, bias=False)
    saver = AtomicCheckpointSaver(
        str(folder), {"model": net}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    return saver, net


def test_the_best_model_of_the_whole_run_survives_a_resume(tmp_path):
    scores = {1: 0.5, 2: 0.3, 3: 0.4, 4: 0.6}
    saver, net = best_saver(tmp_path)
    first = epochs_engine(net, scores)
    saver.attach(first)
    first.run([0], max_epochs=2)
    assert saved_weight(tmp_path / "model.pt") == 1  # epoch 1: 0.5 > 0.3

    saver, net = best_saver(tmp_path)  # a new process resumes after epoch 2
    resumed = epochs_engine(net, scores)
    resumed.load_state_dict({"epoch": 2, "epoch_length": 1, "max_epochs": 3})
    saver.attach(resumed)
    resumed.run([0])
    assert saved_weight(tmp_path / "model.pt") == 1  # epoch 3's 0.4 is not better
    resumed.load_state_dict({"epoch": 3, "epoch_length": 1, "max_epochs": 4})
    resumed.run([0])
    assert saved_weight(tmp_path / "model.pt") == 4  # 0.6 is
    record = json.loads((tmp_path / "model.pt.json").read_text())
    assert [(s["file"], s["epoch"], s["priority"]) for s in record["saved"]] == [("model.pt", 4, 0.6)]


def test_a_resume_from_before_the_best_epoch_forgets_that_epoch(tmp_path):
    saver, net = best_saver(tmp_path)
    engine = epochs_engine(net, {1: 0.3, 2: 0.9})
    saver.attach(engine)
    engine.run([0], max_epochs=2)  # model.pt from epoch 2 (0.9), but the run resumes from epoch 1's checkpoint
    saver, net = best_saver(tmp_path)
    redo = epochs_engine(net, {2: 0.5})
    redo.load_state_dict({"epoch": 1, "epoch_length": 1, "max_epochs": 2})
    saver.attach(redo)
    redo.run([0])
    assert json.loads((tmp_path / "model.pt.json").read_text())["saved"][0]["epoch"] == 2
    assert json.loads((tmp_path / "model.pt.json").read_text())["saved"][0]["priority"] == 0.5


def test_resume_takes_the_newest_readable_checkpoint_and_names_the_broken_ones(tmp_path, caplog):
    torch.save({"network": {"w": torch.ones(1)}, "trainer": {"epoch": 2}}, tmp_path / "last_checkpoint_epoch=2.pt")
    whole = (tmp_path / "last_checkpoint_epoch=2.pt").read_bytes()
    (tmp_path / "last_checkpoint_epoch=3.pt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "last_checkpoint_epoch=10.pt").write_bytes(b"")
    torch.save({"network": {}}, tmp_path / "last_checkpoint_epoch=4.pt")  # readable, but not a trainer checkpoint
    assert [p.name for p in epoch_checkpoints(tmp_path)][:2] == [
        "last_checkpoint_epoch=10.pt",
        "last_checkpoint_epoch=4.pt",
    ]
    with caplog.at_level(logging.WARNING):
        path, content = newest_readable_checkpoint(tmp_path, keys=["network", "trainer"])
    assert path.name == "last_checkpoint_epoch=2.pt" and content["trainer"]["epoch"] == 2
    for broken in ("epoch=10.pt", "epoch=4.pt: KeyError", "epoch=3.pt"):
        assert broken in caplog.text


def test_no_readable_checkpoint_is_an_error_naming_each_file(tmp_path):
    assert newest_readable_checkpoint(tmp_path) is None  # nothing to resume: a fresh start
    (tmp_path / "last_checkpoint_epoch=1.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(RuntimeError, match=r"last_checkpoint_epoch=1\.pt: .*--no-resume"):
        newest_readable_checkpoint(tmp_path)


def pipeline(seed: int = 0) -> tuple[Compose, DataLoader]:
    keys = ["image"]
    transforms = Compose([RandFlipd(keys, prob=0.5, spatial_axis=0), RandAffined(keys, prob=1.0, rotate_range=0.5)])
    data = [{"image": torch.arange(64.0).reshape(1, 8, 8) + i} for i in range(4)]
    loader = DataLoader(Dataset(data, transforms), batch_size=2, shuffle=True, num_workers=0)
    transforms.set_random_state(seed)
    return transforms, loader


def draws(loader) -> list[torch.Tensor]:
    """What a training run draws: an epoch of augmented, shuffled batches and the global generators."""
    batches = [batch["image"].as_tensor() for batch in loader]
    return [*batches, torch.rand(3), torch.tensor(np.random.rand(3)), torch.tensor([random.random()])]  # noqa: NPY002


def test_random_states_finds_wrapped_transforms_generators():
    transforms, _ = pipeline()
    flip, affine = transforms.transforms
    found = {id(r) for r in random_states(transforms)}
    assert {id(transforms.R), id(flip.R), id(affine.R), id(affine.rand_affine.R)} <= found
    flip.library = np  # a module's namespace (np.random's own RandomState) is not the transform's state
    assert {id(r) for r in random_states(transforms)} == found


def test_restoring_the_random_states_replays_the_same_batches_and_draws(tmp_path):
    _, loader = pipeline()
    states = RandomStates(loader)
    draws(loader)  # the run so far
    torch.save(states.state_dict(), tmp_path / "rng.pt")
    expected = draws(loader)
    draws(loader)  # the run goes on (or a new process starts elsewhere)
    states.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))  # loadable without pickle
    replayed = draws(loader)
    assert all(torch.equal(a, b) for a, b in zip(expected, replayed, strict=True))


def test_random_states_of_another_pipeline_are_refused():
    _, loader = pipeline()
    state = RandomStates(loader).state_dict()
    state["transforms"] = state["transforms"][:-1]
    with pytest.raises(ValueError, match="the data pipeline changed"):
        RandomStates(loader).load_state_dict(state)


def final_saver(folder, net) -> AtomicCheckpointSaver:
    return AtomicCheckpointSaver(str(folder), {"model": net}, save_final=True, final_filename="model.pt")


def test_a_run_that_raises_mid_training_writes_no_final_checkpoint(tmp_path):
    net = nn.Linear(1, 1, bias=False)
    engine = epochs_engine(net)

    @engine.on(Events.EPOCH_COMPLETED(once=2))
    def crash(engine):
        raise RuntimeError("CUDA out of memory")

    final_saver(tmp_path, net).attach(engine)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.run([0], max_epochs=3)
    assert not (tmp_path / "model.pt").exists()  # MONAI's saver writes it on EXCEPTION_RAISED: it would look final


def test_a_run_terminated_before_its_last_epoch_writes_no_final_checkpoint(tmp_path, caplog):
    net = nn.Linear(1, 1, bias=False)
    engine = epochs_engine(net)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())
    final_saver(tmp_path, net).attach(engine)
    with caplog.at_level(logging.WARNING):
        engine.run([0], max_epochs=3)
    assert not (tmp_path / "model.pt").exists()
    assert "training stopped in epoch 2 of 3: no final checkpoint (model.pt)" in caplog.text


def test_a_completed_run_writes_the_last_epochs_weights_as_final_checkpoint(tmp_path):
    net = nn.Linear(1, 1, bias=False)
    saver = final_saver(tmp_path, net)
    crashing = epochs_engine(net)
    crashing.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: 1 / 0)
    saver.attach(crashing)
    with pytest.raises(ZeroDivisionError):
        crashing.run([0], max_epochs=3)
    resumed = epochs_engine(net)  # the same saver and engine state run again, as a resumed run does
    resumed.load_state_dict({"epoch": 1, "epoch_length": 1, "max_epochs": 3})
    saver.attach(resumed)
    resumed.run([0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert saved_weight(tmp_path / "model.pt") == 3


def test_a_run_terminated_after_its_last_epoch_writes_the_final_checkpoint(tmp_path):
    net = nn.Linear(1, 1, bias=False)
    engine = epochs_engine(net)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())
    final_saver(tmp_path, net).attach(engine)
    engine.run([0], max_epochs=2)
    assert saved_weight(tmp_path / "model.pt") == 2
