"""Each grid cell's job records and the grid's state (``medseg compare --status``).

A cell's records live beside the study's run folders, in ``<out>/jobs/<bundle>/<loss>/<setting>/seed<k>/``, so
that redoing a run (which deletes its run folder) keeps them. Both are written atomically
(:func:`medseg.checkpoint.atomic_write_text`) and by one writer each:

* ``submission.json``, by the launcher: the launcher, the job's id, its log, the process that holds the job until
  it starts (the launcher itself, submitit's local controller) and when.
* ``state.json``, by the job: ``running`` (host, pid, attempt), ``requeued`` (preempted or timed out: submitted
  again), ``done``, ``failed`` (the error) or ``interrupted`` (Ctrl-C). It counts only when it names the
  submission's job id; a launcher removes it before it submits, so a new job never inherits an old job's state.

:func:`cell_state` combines them with the run folder (``done.json``: :func:`medseg.study.run_status`) and with
whether the job still exists (the recorded process on this machine; SLURM's ``sacct`` through submitit):
``todo``, ``queued``, ``running``, ``done``, ``failed``, ``interrupted`` (a run folder without ``done.json`` and no
job) or ``stale``. A job that vanished without recording its end (killed, out of memory, a node failure) is
``failed``, with its log.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medseg.checkpoint import atomic_write_text

__all__ = [
    "CellState",
    "cell_state",
    "cell_states",
    "clear",
    "grid_status",
    "job_dir",
    "read_state",
    "read_submission",
    "write_state",
    "write_submission",
]

SUBMISSION = "submission.json"
STATE = "state.json"
#: SLURM job states after which the job no longer runs (sacct; ``CANCELLED by <uid>`` starts with ``CANCELLED``).
SLURM_ENDED = (
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
)


def job_dir(out: Path, spec: Any) -> Path:
    """``<out>/jobs/<bundle>/<loss>/<setting>/seed<k>``: the records of the cell whose run folder is
    ``spec.folder(out)`` (``<out>/runs/<bundle>/<loss>/<setting>/seed<k>``)."""
    return Path(out) / "jobs" / spec.folder(Path(out)).relative_to(Path(out) / "runs")


def this_process() -> dict[str, Any]:
    """Host, pid and the pid's start time (to tell a reused pid from this process)."""
    from medseg.runs import _process_start

    return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid())}


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or not JSON (not one of ours)
        return None


def _write(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(dict(record), indent=1, default=str))


def clear(out: Path, spec: Any) -> None:
    """Remove a cell's records before it is submitted again."""
    for name in (SUBMISSION, STATE):
        (job_dir(out, spec) / name).unlink(missing_ok=True)


def write_submission(
    out: Path,
    spec: Any,
    launcher: str,
    job_id: str,
    log: str | Path,
    holder: Mapping[str, Any] | None = None,
    cluster: str | None = None,
    folder: str | Path | None = None,
) -> None:
    """Record that the cell's job ``job_id`` was submitted: ``launcher`` (``local``, ``submitit``), submitit's
    ``cluster`` and ``folder``, the job's ``log`` and the process (``holder``, :func:`this_process`) that holds the
    job until it starts."""
    record = {"launcher": launcher, "cluster": cluster, "job_id": str(job_id), "log": str(log), "submitted": _now()}
    record |= {"holder": dict(holder) if holder else None, "folder": str(folder) if folder else None}
    _write(job_dir(out, spec) / SUBMISSION, record)


def write_state(out: Path, spec: Any, job_id: str, state: str, **fields: Any) -> None:
    """Record the job's ``state`` (``running``, ``requeued``, ``done``, ``failed``), written by the job itself."""
    record = {"job_id": str(job_id), "state": state, "time": _now(), "process": this_process(), **fields}
    _write(job_dir(out, spec) / STATE, record)


def read_submission(out: Path, spec: Any) -> dict[str, Any] | None:
    return _read(job_dir(out, spec) / SUBMISSION)


def read_state(out: Path, spec: Any, job_id: str | None = None) -> dict[str, Any] | None:
    """The cell's ``state.json``; with ``job_id``, only when it is that job's."""
    state = _read(job_dir(out, spec) / STATE)
    if state is None or (job_id is not None and state.get("job_id") != str(job_id)):
        return None
    return state


@dataclass(frozen=True)
class CellState:
    """A cell's state, its job and log, and why (``detail``)."""

    state: str
    job_id: str = ""
    attempt: int = 0
    log: str = ""
    detail: str = ""


def _process_alive(process: Mapping[str, Any] | None) -> bool | None:
    """Whether the recorded process still runs; None when it ran on another machine (cannot be told here)."""
    from medseg.runs import _alive, _process_start

    if not process:
        return None
    if process.get("host") != socket.gethostname():
        return None
    pid = int(process.get("pid", -1))
    return _alive(pid) and _process_start(pid) == process.get("process_start")


def slurm_states(submissions: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Job id → SLURM state (``PENDING``, ``RUNNING``, ``COMPLETED``...; ``UNKNOWN`` when ``sacct`` cannot tell),
    asked of ``sacct`` once for all jobs through submitit."""
    submissions = [s for s in submissions if s.get("cluster") == "slurm"]
    if not submissions:
        return {}
    import submitit

    watcher = submitit.SlurmJob.watcher  # submitit's sacct caller, shared by its SLURM jobs
    for submission in submissions:
        watcher.register_job(submission["job_id"])
    watcher.update()  # one sacct call for every job, now
    return {s["job_id"]: watcher.get_state(s["job_id"], mode="cache") for s in submissions}


def _job_alive(submission: Mapping[str, Any], state: Mapping[str, Any] | None, slurm: Mapping[str, str]) -> bool | None:
    """Whether the cell's job still exists (queued or running); None when this machine cannot tell."""
    if submission.get("cluster") == "slurm":
        known = slurm.get(submission["job_id"], "UNKNOWN").upper()
        if known == "UNKNOWN":
            return None
        return not known.startswith(SLURM_ENDED)
    if state is not None and state.get("state") == "running":
        return _process_alive(state.get("process"))
    return _process_alive(submission.get("holder"))


def cell_state(
    out: Path, spec: Any, weights: Mapping[str, float] | None = None, slurm: Mapping[str, str] | None = None
) -> CellState:
    """The state of the cell ``spec`` of the study in ``out`` (module docstring); ``weights`` are the loss weights
    it should train (a finished run with others is ``stale``); ``slurm``: :func:`slurm_states` of its job."""
    from medseg.study import run_status

    out = Path(out)
    folder_state = run_status(spec.folder(out), weights)
    submission = read_submission(out, spec)
    if submission is None:
        return CellState(folder_state)
    job_id, log = submission["job_id"], submission.get("log", "")
    state = read_state(out, spec, job_id)
    attempt = int(state.get("attempt", 0)) if state else 0
    if folder_state in ("done", "stale"):
        return CellState(folder_state, job_id, attempt, log)
    recorded = state["state"] if state else "queued"
    if recorded in ("failed", "interrupted"):
        return CellState(recorded, job_id, attempt, log, str(state.get("error", "")))
    if recorded == "done":  # the job finished, yet done.json is gone: deleted since
        return CellState(folder_state, job_id, attempt, log, "done.json removed after the job finished")
    slurm = slurm if slurm is not None else slurm_states([submission])
    alive = _job_alive(submission, state, slurm)
    if alive is False:
        where = f" (SLURM: {slurm[job_id]})" if job_id in slurm else ""
        detail = f"the job ended without finishing the run{where}: killed, out of memory or a node failure?"
        return CellState("failed", job_id, attempt, log, detail)
    detail = "" if alive else "whether the job still runs cannot be told from this machine"
    if recorded == "requeued":
        detail = f"preempted or timed out, queued again (attempt {attempt + 1} next)"
    running = recorded == "running"
    if job_id in slurm and alive:  # SLURM knows best: a job it requeued itself (node failure) waits again
        running = slurm[job_id].upper().startswith(("RUNNING", "COMPLETING"))
    return CellState("running" if running else "queued", job_id, attempt, log, detail)


def cell_states(out: str | Path, specs: Sequence[Any], weights: Sequence[Mapping[str, float]]) -> list[CellState]:
    """:func:`cell_state` of each cell (``specs`` with the loss ``weights`` each trains); SLURM is asked once."""
    slurm = slurm_states(filter(None, (read_submission(Path(out), spec) for spec in specs)))
    return [cell_state(Path(out), spec, w, slurm) for spec, w in zip(specs, weights, strict=True)]


def grid_status(grid: Any, out: str | Path) -> pd.DataFrame:
    """One row per cell of ``grid`` (a :class:`medseg.study.Grid`): ``bundle, loss, setting, seed, state, job,
    attempt, log, detail``."""
    from medseg.study import trained_weights

    specs = grid.runs()
    weights = [
        trained_weights(spec.bundle, spec.loss, {**grid.overrides.get(spec.bundle, {}), **dict(spec.setting)})
        for spec in specs
    ]
    rows = []
    for spec, cell in zip(specs, cell_states(out, specs, weights), strict=True):
        row = {"state": cell.state, "job": cell.job_id, "attempt": cell.attempt or "", "log": cell.log}
        rows.append(spec.describe() | row | {"detail": cell.detail})
    return pd.DataFrame(rows)
