"""Checkpoints that survive a kill: atomic writes, resume from the newest readable file, the run's random state.

* :func:`atomic_write` / :func:`atomic_save`: the bytes go to a temporary ``*.partial`` file in the target's folder,
  are flushed and fsynced, then ``os.replace`` puts them in place (and the folder is fsynced), so a reader sees
  the old file or the new one, never part of one.
* :class:`AtomicCheckpointSaver`: MONAI's ``CheckpointSaver`` writing that way, and deleting the files it replaces
  only once their successor is complete (ignite deletes first). With ``save_key_metric`` it remembers the scores
  of the files it keeps in ``<file>.json``, so a resumed run keeps the best model of the whole run. With
  ``save_final`` the final file is written only when the run completes all its epochs (MONAI also writes it when
  training raises, so a crashed run would leave a file that looks final).
* :func:`newest_readable_checkpoint`: the newest ``*_epoch=N.pt`` that loads, skipping (and logging) broken ones.
* :class:`RandomStates`: torch, CUDA, numpy and Python random states plus the ``R`` of every MONAI
  ``Randomizable`` transform and the data loader's generators, as a checkpointable ``state_dict``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import secrets
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver

#: temporary files of unfinished writes end with this (a killed save leaves one; :mod:`medseg.runs` clears them)
PARTIAL_SUFFIX = ".partial"
_EPOCH_FILE = re.compile(r"epoch=(\d+)\.pt$")
logger = logging.getLogger(__name__)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` all at once: ``write(file)`` fills a temporary file beside it, which then replaces ``path``.

    The previous ``path`` stays intact until the new content is complete and on disk (flush, fsync, rename,
    fsync of the folder). If ``write`` fails, the temporary file is removed and the error raised.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    return atomic_write(path, lambda file: torch.save(obj, file))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` with :func:`atomic_save`, and removals held back until the next save is complete.

    ignite's ``Checkpoint`` calls ``remove(old)`` before ``save(new)``; a kill between the two would leave no
    checkpoint at all. Here ``remove`` only notes the file, and the next successful save deletes it.

    Args:
        dirname: the folder of the checkpoints.
        filename: a fixed file name for every save (e.g. ``model.pt``), or None for ignite's names.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename
        self.pending_removal: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        from ignite import distributed as idist

        if idist.get_rank() != self.save_on_rank:
            return
        name = self.filename or filename
        atomic_save(checkpoint, self.dirname / name)
        for old in self.pending_removal:
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)
        self.pending_removal = []

    def remove(self, filename: str) -> None:
        self.pending_removal.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are written atomically by :class:`AtomicDiskSaver`.

    * A save that fails (a full disk) leaves the earlier files and the saver's list of them as they were.
    * Interval checkpoints (``last_checkpoint_epoch=N.pt``): at the first save of a resumed run, the files of the
      same name pattern from before the resume count towards ``n_saved`` too, so resuming leaves no extra files.
    * With ``save_key_metric``, the scores of the kept files go to ``<save_dir>/<file>.json`` (``model.pt.json``:
      metric, score, epoch) after each save. A resumed run reads it back at its first validation, keeping the
      entries of epochs before the current one, so ``model.pt`` stays the best model of the whole run rather
      than of the part since the resume. ``key_metric_save_state`` is not supported (the state is in that file).
    * With ``save_final``, the final file (``model.pt`` of a last-epoch protocol) is written when the run completes
      every epoch, and neither when training raises (MONAI saves it then too) nor when it is terminated early.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        if kwargs.get("key_metric_save_state"):
            raise ValueError(
                "AtomicCheckpointSaver keeps the key-metric state in <file>.json: drop key_metric_save_state"
            )
        super().__init__(save_dir, save_dict, **kwargs)
        self.key_metric_filename = kwargs.get("key_metric_filename")
        self.key_metric_name = kwargs.get("key_metric_name")
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = AtomicDiskSaver(save_dir, filename=fixed)
        self._key_metric_epochs: dict[str, int] = {}
        self._terminated_at: int | None = None  # the epoch in which the run was stopped before its end
        self._epoch_completed = False
        self._key_metric_restored = False
        self._earlier_intervals_counted = False

    def attach(self, engine: Engine) -> None:
        """MONAI's handlers, and with ``save_final`` two that note whether the run was terminated early."""
        super().attach(engine)
        if self._final_checkpoint is not None:
            engine.add_event_handler(Events.STARTED, self._note_progress, None)
            engine.add_event_handler(Events.EPOCH_STARTED, self._note_progress, False)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._note_progress, True)
            engine.add_event_handler(Events.TERMINATE, self._note_termination)

    @property
    def _final_name(self) -> str:
        return self._final_filename or "final"

    def _note_progress(self, engine: Engine, epoch_completed: bool | None) -> None:
        self._epoch_completed = bool(epoch_completed)
        if epoch_completed is None:  # a new run
            self._terminated_at = None

    def _note_termination(self, engine: Engine) -> None:
        if not (self._epoch_completed and engine.state.epoch >= engine.state.max_epochs):
            self._terminated_at = engine.state.epoch

    @property
    def key_metric_record(self) -> Path | None:
        """The file that remembers the key-metric scores (None without ``save_key_metric``)."""
        if self._key_metric_checkpoint is None:
            return None
        return Path(self.save_dir) / f"{self.key_metric_filename or 'key_metric_checkpoints'}.json"

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        """Re-raise ``e`` without saving: MONAI saves the final checkpoint here, which would then look final.

        (Still registered for ``EXCEPTION_RAISED``: ignite swallows an exception whose event has an empty list of
        handlers, and removing MONAI's leaves one.)
        """
        logger.warning("training raised %s: no final checkpoint (%s) is written", type(e).__name__, self._final_name)
        raise e

    def completed(self, engine: Engine) -> None:
        """Save the final checkpoint, unless the run was stopped (``engine.terminate()``) before its last epoch."""
        if self._terminated_at is not None:
            logger.warning(
                "training stopped in epoch %s of %s: no final checkpoint (%s) is written, it is written only when "
                "every epoch completes; the epoch checkpoints hold the weights so far",
                self._terminated_at,
                engine.state.max_epochs,
                self._final_name,
            )
            return
        with _unchanged_on_failure(self._final_checkpoint):
            super().completed(engine)

    def interval_completed(self, engine) -> None:
        with _unchanged_on_failure(self._interval_checkpoint):
            super().interval_completed(engine)
        if not self._earlier_intervals_counted:
            self._earlier_intervals_counted = True
            self._remove_earlier_intervals()

    def metrics_completed(self, engine) -> None:
        if not self._key_metric_restored:
            self._restore_key_metric_state(engine.state.epoch)
            self._key_metric_restored = True
        saved_before = list(self._key_metric_checkpoint._saved)
        with _unchanged_on_failure(self._key_metric_checkpoint):
            super().metrics_completed(engine)
        new_items = [item for item in self._key_metric_checkpoint._saved if item not in saved_before]
        if new_items:
            for item in new_items:
                self._key_metric_epochs[item.filename] = engine.state.epoch
            self._write_key_metric_state(engine)

    def _remove_earlier_intervals(self) -> None:
        """Delete the interval files a run before the resume left, beyond ``n_saved`` with this run's ones."""
        checkpoint = self._interval_checkpoint
        if checkpoint.n_saved is None or not checkpoint._saved:
            return
        newest = checkpoint._saved[-1]
        score = re.escape(f"={newest.priority}.")  # ignite names them <prefix>_<name>_epoch=<N>.pt
        pattern = re.compile(re.escape(newest.filename).replace(score, r"=(\d+)\.", 1) + "$")
        ours = {item.filename for item in checkpoint._saved}
        earlier = []
        for path in Path(self.save_dir).iterdir():
            match = pattern.match(path.name)
            if match and path.name not in ours and int(match.group(1)) < newest.priority:
                earlier.append((int(match.group(1)), path))
        keep = max(checkpoint.n_saved - len(checkpoint._saved), 0)
        for _, path in sorted(earlier)[: len(earlier) - keep]:
            logger.info("removing %s: newer checkpoints of this run replace it", path.name)
            path.unlink(missing_ok=True)

    def _write_key_metric_state(self, engine) -> None:
        epochs = self._key_metric_epochs
        saved = [  # "filename": ignite's name for the entry, "file": the one written (key_metric_filename)
            {
                "file": self.key_metric_filename or item.filename,
                "epoch": epochs[item.filename],
                "priority": float(item.priority),
                "filename": item.filename,
            }
            for item in self._key_metric_checkpoint._saved
        ]
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        atomic_write_text(self.key_metric_record, json.dumps({"key_metric": name, "saved": saved}, indent=2))

    def _restore_key_metric_state(self, epoch: int) -> None:
        record = self.key_metric_record
        if record is None or not record.is_file():
            return
        try:
            saved = json.loads(record.read_text())["saved"]
            kept = [s for s in saved if s["epoch"] < epoch and (Path(self.save_dir) / s["file"]).is_file()]
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring %s (%s): the next validation decides the best model afresh", record, error)
            return
        self._key_metric_checkpoint._saved = [Checkpoint.Item(s["priority"], s["filename"]) for s in kept]
        self._key_metric_epochs = {s["filename"]: s["epoch"] for s in kept}
        if kept:
            logger.info("best models so far (from %s): %s", record.name, ", ".join(_describe_saved(s) for s in kept))


@contextlib.contextmanager
def _unchanged_on_failure(checkpoint: Checkpoint | None) -> Iterator[None]:
    """ignite updates its list of saved files before it saves: undo that (and the held-back removals) on failure."""
    saved = list(checkpoint._saved) if checkpoint is not None else []
    try:
        yield
    except BaseException:
        if checkpoint is not None:
            checkpoint._saved = saved
            checkpoint.save_handler.pending_removal = []
        raise


def _describe_saved(entry: Mapping[str, Any]) -> str:
    return f"{entry['file']} (epoch {entry['epoch']}, score {entry['priority']:.4f})"


def epoch_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """The ``*_epoch=N.pt`` files that ``CheckpointSaver(save_interval=...)`` writes, newest epoch first."""
    found = []
    for path in Path(ckpt_dir).glob("*epoch=*.pt"):
        match = _EPOCH_FILE.search(path.name)
        if match:
            found.append((int(match.group(1)), path.name, path))
    return [path for *_, path in sorted(found, reverse=True)]


def newest_readable_checkpoint(
    ckpt_dir: str | Path, keys: Iterable[str] = (), map_location: Any = "cpu"
) -> tuple[Path, dict] | None:
    """The newest epoch checkpoint in ``ckpt_dir`` that ``torch.load`` reads and that holds ``keys``, and its content.

    Broken files (a half-written save, a truncated copy) are skipped with a warning naming them. None when there
    is no epoch checkpoint; a ``RuntimeError`` naming every file when there are some and none is readable.
    """
    keys = list(keys)
    candidates = epoch_checkpoints(ckpt_dir)
    problems = []
    for path in candidates:
        try:
            content = torch.load(path, map_location=map_location, weights_only=True)
            missing = [k for k in keys if k not in content]
            if missing:
                raise KeyError(f"it lacks {missing}")
        except Exception as error:  # any failure to read means: not this file
            problems.append(f"{path.name}: {type(error).__name__}: {str(error)[:200]}")
            logger.warning("skipping checkpoint %s, it cannot be resumed from (%s)", path, problems[-1])
            continue
        return path, content
    if problems:
        raise RuntimeError(
            f"no checkpoint in {ckpt_dir} can be resumed from ({'; '.join(problems)}): start afresh with "
            "--no-resume (resume=false), which moves these files aside, or use a new --bundle-root"
        )
    return None


#: what :func:`random_states` does not look into: data, and code (a module's namespace is not a transform's state)
_NOT_WALKED = (str, bytes, Mapping, torch.Tensor, np.ndarray, type, types.ModuleType, types.FunctionType)


def random_states(obj: Any) -> list[np.random.RandomState]:
    """The ``R`` (``numpy.random.RandomState``) of every MONAI ``Randomizable`` reachable from ``obj``.

    Walks attributes the way ``monai.data.utils.set_rnd`` does (lists, tuples and object attributes; not into
    dicts, arrays or tensors), so a dataset, a ``Compose`` and wrapped transforms (``RandAffined`` holds a
    ``RandAffine``) are all covered, each state once, in a fixed order.
    """
    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def visit(item: Any) -> None:
        if id(item) in seen or isinstance(item, _NOT_WALKED):
            return
        seen.add(id(item))
        if isinstance(item, np.random.RandomState):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            for element in item:
                visit(element)
        elif hasattr(item, "__dict__"):
            for key, value in vars(item).items():
                if not key.startswith("__"):
                    visit(value)

    visit(obj)
    return found


def _numpy_state(state: tuple) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached_gaussian = state
    return {
        "kind": kind,
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    keys = np.asarray(state["keys"].cpu().numpy(), dtype=np.uint32)
    return state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]


class RandomStates:
    """Every random state a training run draws from, as a ``state_dict`` to store in its checkpoints.

    Restoring it makes a resumed run draw the same random numbers as an uninterrupted one: torch (CPU and CUDA),
    numpy's and Python's global generators, the ``R`` of each random transform in ``dataloader``'s dataset (used
    directly when ``num_workers=0``; with workers, their seeds come from torch's generator) and the generators of
    the loader and its sampler, if set.

    Args:
        dataloader: the training data loader.
        transforms: more objects holding random transforms, if any are outside the loader's dataset.
    """

    def __init__(self, dataloader: Any = None, transforms: Any = None) -> None:
        self.dataloader = dataloader
        self.transforms = transforms

    def _transform_states(self) -> list[np.random.RandomState]:
        return random_states([getattr(self.dataloader, "dataset", None), self.transforms])

    def _generators(self) -> list[torch.Generator]:
        loader = self.dataloader
        sampler = getattr(loader, "sampler", None)
        candidates = [getattr(loader, "generator", None), getattr(sampler, "generator", None)]
        unique = {id(g): g for g in candidates if isinstance(g, torch.Generator)}
        return list(unique.values())

    def state_dict(self) -> dict[str, Any]:
        version, python_state, gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(np.random.get_state()),  # noqa: NPY002 (the global one is what we save)
            "python": {"version": version, "state": torch.tensor(python_state), "gauss_next": gauss_next},
            "transforms": [_numpy_state(r.get_state()) for r in self._transform_states()],
            "generators": [g.get_state() for g in self._generators()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        transforms, generators = self._transform_states(), self._generators()
        if len(state["transforms"]) != len(transforms) or len(state["generators"]) != len(generators):
            raise ValueError(
                f"the checkpoint holds {len(state['transforms'])} transform and {len(state['generators'])} generator "
                f"random states, this run has {len(transforms)} and {len(generators)}: the data pipeline changed "
                "since the checkpoint was written; start afresh with --no-resume (resume=false)"
            )
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        elif state["cuda"]:
            logger.warning("the checkpoint's CUDA random states are not restored: this machine has another GPU count")
        np.random.set_state(_numpy_tuple(state["numpy"]))  # noqa: NPY002
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"].cpu().tolist()), python["gauss_next"]))
        for generator, saved in zip(transforms, state["transforms"], strict=True):
            generator.set_state(_numpy_tuple(saved))
        for generator, saved in zip(generators, state["generators"], strict=True):
            generator.set_state(saved.cpu())
