"""``medseg compare --launcher submitit``: one job per grid cell through submitit (SLURM; extra ``medseg[cluster]``).

The cells to run (the study's plan: finished cells skipped, interrupted and failed ones redone, cells whose job
still exists left alone) go to the cluster as one job array, each cell an array task of its own with its folder
``<out>/jobs/submitit/<job id>/`` (submission script, pickled job, log) and the request of
:class:`~medseg.launch.resources.Resources`. Each job is a :class:`CheckpointableCell`, a
``submitit.helpers.Checkpointable``: when SLURM signals a preemption or the coming end of ``--timeout-min``,
submitit calls its ``checkpoint``, which stops the training and has the same job queued again; started again, the
job resumes from the bundle's newest checkpoint (:func:`medseg.launch.cell.run_cell`). Without ``--wait`` the
command returns once the jobs are submitted and the job that completes the grid writes the tables and plots;
``medseg compare --status`` shows where the grid stands.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.console import UserError
from medseg.launch import records
from medseg.launch.cell import Cell, make_cells, run_cell, stop_training
from medseg.launch.resources import Resources

try:
    import submitit
except ImportError as error:  # the optional extra
    raise UserError(
        "--launcher submitit needs the submitit package", hint="pip install 'medseg[cluster]' (or pip install submitit)"
    ) from error

__all__ = ["CheckpointableCell", "SubmititLauncher", "write_tables_when_complete"]

logger = logging.getLogger(__name__)
#: ``<out>/tables/`` lock of the job that writes the tables of a complete grid.
TABLES_LOCK = ".writing"


class CheckpointableCell(submitit.helpers.Checkpointable):
    """A submitit job that runs one cell (:func:`medseg.launch.cell.run_cell`) and, with ``grid``, writes the
    study's tables and plots when it completes the grid."""

    def __init__(self, cell: Cell, grid: Any = None) -> None:
        self.cell = cell
        self.grid = grid

    def __call__(self) -> dict[str, Any] | None:
        from medseg.console import console

        env = submitit.JobEnvironment()
        with console(verbose=True):
            summary = run_cell(self.cell, env.job_id, node=env.node)
            if summary is not None and self.grid is not None:
                try:
                    write_tables_when_complete(self.grid, self.cell.out)
                except Exception:  # the cell is done all the same; --tables-only writes them again
                    logger.exception("the grid is complete, but writing its tables failed (try --tables-only)")
        return summary

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Preempted or timed out: stop the training (its checkpoints stay), record ``requeued``, queue this job
        again (submitit then requeues it; started again it resumes)."""
        stop_training()
        env = submitit.JobEnvironment()
        state = records.read_state(self.cell.out, self.cell.spec, env.job_id) or {}
        attempt = int(state.get("attempt", 1))
        records.write_state(self.cell.out, self.cell.spec, env.job_id, "requeued", attempt=attempt)
        return super().checkpoint(*args, **kwargs)


def write_tables_when_complete(grid: Any, out: Path) -> list[Path]:
    """Write the study's tables and plots if every cell of ``grid`` is done, once (a lock in ``<out>/tables``)."""
    from medseg.study import run_status, write_outputs

    if any(run_status(spec.folder(out)) != "done" for spec in grid.runs()):
        return []
    lock = Path(out) / "tables" / TABLES_LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        logger.info("another job is writing the tables (%s)", lock)
        return []
    os.close(descriptor)
    try:
        logger.info("the grid is complete: writing its tables and plots")
        return write_outputs(out, grid)[1]
    finally:
        lock.unlink(missing_ok=True)


@dataclass(frozen=True)
class SubmititLauncher:
    """Submits each cell as a job through ``submitit.AutoExecutor``.

    Args:
        resources: what each job asks for; ``timeout_min`` is required.
        cluster: ``slurm``, or ``local`` (submitit's ``LocalExecutor``: the same code path, jobs as processes here).
        wait: wait for the jobs (then the caller writes the tables); else return once they are submitted.
        poll_s: seconds between looks at the jobs while waiting (None: 30 on SLURM, whose ``sacct`` is shared; 1
            for local jobs).
    """

    resources: Resources
    cluster: str = "slurm"
    wait: bool = False
    poll_s: float | None = None

    @property
    def waits(self) -> bool:
        return self.wait

    def executor(self, out: Path) -> submitit.AutoExecutor:
        """The executor of the study in ``out``: jobs in ``<out>/jobs/submitit/<job id>/``."""
        if self.resources.timeout_min is None:
            raise UserError(
                "--launcher submitit needs --timeout-min: the wall time each job asks SLURM for",
                hint="a job that reaches it resubmits itself and resumes from its checkpoint",
            )
        if self.cluster == "local" and self.resources.nnodes > 1:
            raise UserError("--submitit-cluster local runs on one node: --nnodes must be 1")
        timeouts = {f"{name}_max_num_timeout": self.resources.max_timeouts for name in ("slurm", "local")}
        try:
            executor = submitit.AutoExecutor(folder=job_folder(out), cluster=self.cluster, **timeouts)
        except RuntimeError as error:  # submitit's "Could not detect srun"
            hint = "submit from a machine of the SLURM cluster (its login node)"
            raise UserError(f"submitit cannot submit to {self.cluster}: {error}", hint=hint) from error
        executor.update_parameters(**self.resources.submitit_parameters(f"medseg-{Path(out).resolve().name}"))
        return executor

    def __call__(
        self, grid: Any, out: Path, todo: Sequence[tuple[Any, Mapping[str, float]]], log: Callable[[str], None]
    ) -> list[Any]:
        """Submit the cells ``todo`` (spec, loss weights) of ``grid`` as one job array; returns the jobs. With
        ``wait``, returns when they have ended and raises when any failed."""
        out = Path(out)
        executor = self.executor(out)
        cells = make_cells(
            grid, out, todo, gpus=self.resources.processes_per_node, nodes=self.resources.nnodes,
            threads=self.resources.cpus_per_job,
        )  # fmt: skip
        if not cells:
            return []
        for cell in cells:
            records.clear(out, cell.spec)
        with executor.batch():
            jobs = [executor.submit(CheckpointableCell(cell, None if self.wait else grid)) for cell in cells]
        holder = submitit_holder(jobs, self.cluster)
        for cell, job in zip(cells, jobs, strict=True):
            log_path, cluster = job.paths.stdout, self.cluster
            records.write_submission(
                out, cell.spec, "submitit", job.job_id, log_path, holder(job), cluster, job_folder(out)
            )
            log(f"submitted job {job.job_id}: {cell.folder} (log {job.paths.stdout})")
        if self.wait:
            self._wait(cells, jobs, log)
        return jobs

    def _wait(self, cells: Sequence[Cell], jobs: Sequence[Any], log: Callable[[str], None]) -> None:
        failed = []
        by_job = {id(job): cell for job, cell in zip(jobs, cells, strict=True)}
        poll_s = self.poll_s or (30.0 if self.cluster == "slurm" else 1.0)
        for job in submitit.helpers.as_completed(jobs, poll_frequency=poll_s):
            cell = by_job[id(job)]
            error = job.exception()
            if error is None:
                log(f"job {job.job_id} done: {cell.folder}")
            else:
                last = str(error).strip().splitlines()[-1:] or [type(error).__name__]
                failed.append(f"  {cell.folder}: job {job.job_id} failed ({last[0]}), log {job.paths.stdout}")
                log(f"job {job.job_id} FAILED: {cell.folder}, log {job.paths.stdout}")
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(jobs)} jobs failed:\n" + "\n".join(failed) + "\nrun the same command again "
                "to resubmit them, or add --tables-only for tables of what is done"
            )


def job_folder(out: Path) -> Path:
    """submitit's folder of each job: ``<out>/jobs/submitit/<job id>`` (``%j``)."""
    return Path(out) / "jobs" / "submitit" / "%j"


def submitit_holder(jobs: Sequence[Any], cluster: str) -> Callable[[Any], dict[str, Any] | None]:
    """Job → the process that holds it until it starts: submitit's local controller (its pid is the job id); on
    SLURM none (``sacct`` tells)."""
    if cluster != "local":
        return lambda job: None
    from medseg.runs import _process_start

    host = records.this_process()["host"]
    return lambda job: {"host": host, "pid": int(job.job_id), "process_start": _process_start(int(job.job_id))}
