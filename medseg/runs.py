"""One training run per folder: a lock, the run's config beside its checkpoints, a clean fresh start.

A bundle's ``initialize`` opens a :class:`RunFolder` and its ``run`` closes it:

* ``<bundle_root>/run.lock`` names the process (pid, host, start time). A second run on the same folder refuses
  while that process lives; a lock left by a process that is gone (killed, crashed) is taken over.
* ``<ckpt_dir>/run_config.json`` holds the run's config (:func:`describe` of the bundle's ``run_config``: loss,
  network, data, label map...) and its hash. A run resumes only when its config is the same; otherwise it stops
  with the differences and the two ways on (a new ``--bundle-root``, or ``--no-resume``).
* A fresh start (``resume`` off, or nothing to resume) moves an earlier run's checkpoints to
  ``<ckpt_dir>/replaced-<time>/``, so they can neither be resumed by mistake nor lost, and the contents of its log
  folders (TensorBoard events in ``<bundle_root>/eval``) to ``<log_dir>/replaced-<time>/``, so the new run's curves
  do not mix with the earlier run's (TensorBoard shows the moved ones as a run of their own).

A multi-GPU run checks first (:func:`check_validation_cases_per_rank`) that each process gets a validation case.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterable, Mapping, Sized
from pathlib import Path
from typing import Any

from .checkpoint import PARTIAL_SUFFIX, atomic_write_text, epoch_checkpoints
from .console import UserError

logger = logging.getLogger(__name__)
LOCK_NAME = "run.lock"
CONFIG_NAME = "run_config.json"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class RunFolderError(UserError):
    """A run cannot use this folder: another run holds it, or it holds a run with another config."""


def default_run_folder(bundle: str | Path, loss: str | Path, fold: int | None = None) -> Path:
    """``runs/<bundle>-<loss>[-fold<k>]`` (relative to the working folder): where ``medseg train`` writes by default."""
    name = Path(loss).name  # a loss given as a path names the run by its file, never a folder outside runs/
    name = name.removesuffix(".json")
    return Path("runs") / f"{Path(bundle).name}-{name}{'' if fold is None else f'-fold{fold}'}"


def describe(value: Any, _depth: int = 0) -> Any:
    """``value`` as plain JSON data that equal configurations share, to compare and hash runs.

    Modules by class and ``repr`` (the architecture), functions by name and the values they captured (a
    ``rebalance_schedule(...)``), other objects by class and public attributes (a ``DistanceMapd``), paths and
    strings naming existing paths made absolute; random generators (their state changes) are left out.
    """
    import numpy as np
    import torch

    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return str(Path(value).resolve()) if os.sep in value and os.path.exists(value) else value
    if isinstance(value, Path):
        return str(value.resolve())
    if _depth > 8:
        return _ADDRESS.sub("", repr(value))
    if isinstance(value, Mapping):
        return {str(k): describe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v, _depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((describe(v, _depth + 1) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return {
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
        }
    if isinstance(value, (torch.device, torch.dtype, np.dtype)):
        return str(value)
    if isinstance(value, (np.random.RandomState, np.random.Generator, torch.Generator)):
        return type(value).__name__
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.nn.Module):
        return {"class": _qualname(type(value)), "repr": _ADDRESS.sub("", repr(value))}
    if isinstance(value, functools.partial):
        return {
            "partial": describe(value.func, _depth + 1),
            "args": describe(value.args, _depth + 1),
            "keywords": describe(value.keywords, _depth + 1),
        }
    if isinstance(value, type):
        return _qualname(value)
    if callable(value) and hasattr(value, "__code__"):
        cells = [c.cell_contents for c in value.__closure__ or ()]
        return {
            "function": _qualname(value),
            "captured": describe(cells, _depth + 1),
            "defaults": describe(value.__defaults__, _depth + 1),
        }
    if hasattr(value, "__dict__"):
        public = {k: v for k, v in vars(value).items() if not k.startswith("_")}
        return {"class": _qualname(type(value)), **describe(public, _depth + 1)}
    return _ADDRESS.sub("", repr(value))


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"


def config_hash(described: Any) -> str:
    """sha256 of :func:`describe`'s output as canonical JSON."""
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the lock's owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    if pid <= 0:  # os.kill(0 or -1, ...) would address a whole process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunFolder:
    """Opens a training run's folder: lock it, check or record the run's config, move an earlier run aside.

    Args:
        root: the run folder (the bundle root); the lock is ``<root>/run.lock``.
        ckpt_dir: where the checkpoints are (``<root>/models``); ``run_config.json`` goes there.
        config: what identifies the run (loss, network, data, label map...), described by :func:`describe`.
        resume: whether this run continues the checkpoints it finds (else it starts afresh).
        log_dirs: folders the run logs to (the bundle's ``output_dir``, TensorBoard events): a fresh start moves
            what an earlier run left there aside. None of them may hold ``root`` or ``ckpt_dir``.
    """

    def __init__(
        self,
        root: str | Path,
        ckpt_dir: str | Path,
        config: Any,
        resume: bool = True,
        log_dirs: Iterable[str | Path] = (),
    ) -> None:
        self.root = Path(root)
        self.ckpt_dir = Path(ckpt_dir)
        self.config = config
        self.resume = resume
        self.log_dirs = [Path(d) for d in log_dirs]
        self.lock_path = self.root / LOCK_NAME
        self.held = False

    def open(self) -> RunFolder:
        """Lock the folder, clear unfinished writes, then check the config (resume) or start afresh."""
        self._check_log_dirs()
        self.root.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            for partial in self.ckpt_dir.glob(f"*{PARTIAL_SUFFIX}"):
                logger.info("removing %s, an unfinished write of an interrupted run", partial)
                partial.unlink(missing_ok=True)
            described = describe(self.config)
            if self.resume and epoch_checkpoints(self.ckpt_dir):
                self._check_same_run(described)
            else:
                self._start_afresh(described)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Release the lock (if this object holds it)."""
        if self.held:
            self.lock_path.unlink(missing_ok=True)
            self.held = False

    def _lock(self) -> None:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "process_start": _process_start(os.getpid()),
        }
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                self._take_over_if_stale(me)
                continue
            with os.fdopen(fd, "w") as file:
                json.dump(me, file)
            self.held = True
            return
        raise RunFolderError(f"could not lock {self.lock_path}: another run keeps taking it")

    def _take_over_if_stale(self, me: Mapping[str, Any]) -> None:
        try:
            owner = json.loads(self.lock_path.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (ValueError, KeyError, TypeError):
            if time.time() - self.lock_path.stat().st_mtime < 10:  # being written right now
                time.sleep(1)
                return
            owner, pid, host = {}, -1, str(me["host"])
        same_process = pid == me["pid"] and owner.get("process_start") == me["process_start"]
        if host == me["host"] and not same_process:
            gone = not _alive(pid) or owner.get("process_start") != _process_start(pid)
            if not gone:
                raise RunFolderError(
                    f"{self.root} is in use by another run (pid {pid} on {host}, started {owner.get('started')}): "
                    "two runs in one folder overwrite each other's checkpoints and logs. Wait for it to finish, "
                    f"or use another --bundle-root; if that process is not a medseg run, delete {self.lock_path}"
                )
        elif host != me["host"]:
            raise RunFolderError(
                f"{self.root} is in use by a run on another machine (pid {pid} on {host}, started "
                f"{owner.get('started')}). Use another --bundle-root; if that run is over, delete {self.lock_path}"
            )
        what = "an earlier run in this process" if same_process else f"pid {pid}, which is gone"
        logger.info("taking over %s from %s", self.lock_path, what)
        stale = self.lock_path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.replace(self.lock_path, stale)  # one process wins the takeover, the others retry
        except FileNotFoundError:
            return
        stale.unlink(missing_ok=True)

    def _check_same_run(self, described: Any) -> None:
        record = self.ckpt_dir / CONFIG_NAME
        ways_on = (
            "use a new --bundle-root for this run, or --no-resume (resume=false) to start afresh in this folder "
            f"(the earlier checkpoints are moved to {self.ckpt_dir}/replaced-<time>/)"
        )
        if not record.is_file():
            raise RunFolderError(
                f"{self.ckpt_dir} holds checkpoints but no {CONFIG_NAME}, so whether they come from this run's "
                f"config cannot be told: {ways_on}"
            )
        saved = json.loads(record.read_text())
        if saved.get("sha256") == config_hash(described):
            logger.info("resuming the run in %s (same config: %s)", self.root, record)
            return
        differences = _differences(saved.get("config", {}), described)
        raise RunFolderError(
            f"{self.ckpt_dir} holds a run with another config, so it is not resumed ({differences}): {ways_on}"
        )

    def _check_log_dirs(self) -> None:
        """A log folder whose contents a fresh start moves aside must not hold the run folder or its checkpoints."""
        kept = {"the run folder": self.root.resolve(), "the checkpoint folder": self.ckpt_dir.resolve()}
        for log_dir in self.log_dirs:
            for what, path in kept.items():
                if log_dir.resolve() == path or log_dir.resolve() in path.parents:
                    raise RunFolderError(
                        f"the log folder {log_dir} holds {what} {path}: a fresh start moves an earlier run's logs "
                        "aside, and would move it too. Give the logs a folder of their own (output_dir, e.g. "
                        "<bundle_root>/eval)"
                    )

    def _start_afresh(self, described: Any) -> None:
        earlier = [p for p in self.ckpt_dir.iterdir() if p.is_file() and p.name.endswith((".pt", ".pt.json"))]
        record = self.ckpt_dir / CONFIG_NAME
        if record.is_file():
            earlier.append(record)
        logs = {d: [p for p in d.iterdir() if not p.name.startswith("replaced-")] for d in self.log_dirs if d.is_dir()}
        aside = _aside_name([self.ckpt_dir, *logs])
        _move_aside(earlier, self.ckpt_dir / aside, f"starting afresh in {self.root}: the earlier run's checkpoints")
        for log_dir, paths in logs.items():
            _move_aside(paths, log_dir / aside, "the earlier run's logs")
        payload = {"sha256": config_hash(described), "config": described}
        atomic_write_text(record, json.dumps(payload, indent=1, sort_keys=True))


def _aside_name(folders: list[Path]) -> str:
    """``replaced-<time>``, with ``-2``, ``-3``... when a fresh start earlier in the same second took it."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name, number = f"replaced-{stamp}", 1
    while any((folder / name).exists() for folder in folders):
        number += 1
        name = f"replaced-{stamp}-{number}"
    return name


def _move_aside(paths: list[Path], aside: Path, what: str) -> None:
    """Move ``paths`` into the new folder ``aside`` (none when there is nothing to move)."""
    if not paths:
        return
    aside.mkdir()
    for path in paths:
        os.replace(path, aside / path.name)
    logger.info("%s (%d) moved to %s", what, len(paths), aside)


def check_validation_cases_per_rank(
    world_size: int,
    validation_data: Sized,
    train_data: Sized,
    val_fraction: float | None = None,
    n_folds: int | None = None,
) -> None:
    """Refuse a multi-GPU run with fewer validation cases than processes, before any data is loaded.

    MONAI's ``DistributedSampler(even_divisible=False)`` gives each process at least one validation case; with
    fewer cases it fails while the trainer is built ("the dataset length is less than the number of participating
    ranks"). The error here names both numbers and the two ways on: fewer GPUs, or more validation cases (the
    ``val_fraction`` that gives enough, or, when validating on a fold, the most ``n_folds`` that do).

    Args:
        world_size: the number of processes (``torch.distributed.get_world_size()``).
        validation_data: the validation datalist; ``train_data``: the training datalist (together: the cases split).
        val_fraction: the hold-out fraction that made the split, if a hold-out did.
        n_folds: the number of folds, if the validation cases are one fold of a cross-validation.
    """
    n_val, total = len(validation_data), len(validation_data) + len(train_data)
    if n_val >= world_size:
        return
    gpus = f"{n_val} GPU{'' if n_val == 1 else 's'}"
    ways = [f"run on at most {gpus} (torchrun --nproc_per_node={n_val})"] if n_val else []
    if world_size < total:  # a split can give each process a validation case and keep one to train on
        most_folds = total // world_size
        if n_folds is not None and 2 <= most_folds < n_folds:
            ways.append(f"validate on larger folds: n_folds={most_folds} or fewer (now {n_folds})")
        elif n_folds is None and (needed := math.ceil(100 * world_size / total) / 100) < 1:
            now = "" if val_fraction is None else f" (now {val_fraction})"
            ways.append(f"hold out more training cases for validation: val_fraction={needed} or more{now}")
    if not ways:
        ways.append(f"use a dataset with more cases (this one has {total})")
    raise UserError(
        f"{world_size} processes (GPUs) but {n_val} validation case{'' if n_val == 1 else 's'} (of {total} "
        f"training cases): each process needs at least one. To fix: {', or '.join(ways)}"
    )


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any], limit: int = 4) -> str:
    """``key: saved -> current`` for the top-level keys that differ (values shortened)."""

    def short(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 70 else text[:67] + "..."

    keys = sorted(set(saved) | set(current))
    changed = [k for k in keys if saved.get(k, "<unset>") != current.get(k, "<unset>")]
    if not changed:
        return "the config's hash differs"
    parts = [f"{k}: {short(saved.get(k, '<unset>'))} -> {short(current.get(k, '<unset>'))}" for k in changed[:limit]]
    more = f"; and {len(changed) - limit} more" if len(changed) > limit else ""
    return "; ".join(parts) + more
