"""``medseg compare --launcher local``: the grid's cells on this machine.

``--jobs 1`` (the default) runs them one after another in this process, as the study always did. ``--jobs K``
runs K at once, each cell in a process of its own (``python -m medseg.launch.cell``) with its log in
``<out>/jobs/<cell>/log.txt``: on a machine with GPUs each process sees only its own (``CUDA_VISIBLE_DEVICES``:
K slots of ``--gpus-per-job`` GPUs), and each gets ``--cpus-per-job`` torch threads (default: the cores shared
out). A failed cell does not stop the others; the launcher reports every failure, with its log, at the end.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.console import UserError
from medseg.launch import records
from medseg.launch.cell import Cell, make_cells, run_cell

__all__ = ["LocalLauncher", "gpu_slots", "visible_gpus"]


def visible_gpus() -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries: that variable's list when set, else ``0..n-1``."""
    import torch

    count = torch.cuda.device_count()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [entry.strip() for entry in given.split(",") if entry.strip()][:count]
    return [str(index) for index in range(count)]


def gpu_slots(jobs: int, gpus_per_job: int, gpus: Sequence[str]) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of ``jobs`` parallel processes: disjoint sets of ``gpus_per_job`` of ``gpus``."""
    if jobs * gpus_per_job > len(gpus):
        raise UserError(
            f"--jobs {jobs} × --gpus-per-job {gpus_per_job} needs {jobs * gpus_per_job} GPUs; "
            f"this machine shows {len(gpus)} ({','.join(gpus) or 'none'})",
            hint="lower --jobs or --gpus-per-job",
        )
    return [",".join(gpus[k * gpus_per_job : (k + 1) * gpus_per_job]) for k in range(jobs)]


@dataclass(frozen=True)
class LocalLauncher:
    """Runs the cells on this machine: in this process (``jobs=1``), or ``jobs`` processes at once.

    Args:
        jobs: cells at once.
        gpus_per_job: GPUs per cell (None: 1 when the machine has GPUs, else the CPU); more than one trains under
            ``torchrun --standalone``.
        cpus_per_job: torch threads per cell (None: in-process torch's default; parallel ones share the cores).
    """

    jobs: int = 1
    gpus_per_job: int | None = None
    cpus_per_job: int | None = None
    waits = True  # the grid is complete (or has failed) when the call returns

    def __call__(
        self, grid: Any, out: Path, todo: Sequence[tuple[Any, Mapping[str, float]]], log: Callable[[str], None]
    ) -> None:
        """Run the cells ``todo`` (spec, loss weights) of ``grid``; raises when any failed."""
        gpus = visible_gpus()
        per_job = (1 if gpus else 0) if self.gpus_per_job is None else self.gpus_per_job
        if per_job > 0 and not gpus:
            raise UserError(f"--gpus-per-job {per_job}: this machine has no GPU", hint="leave --gpus-per-job out")
        slots = gpu_slots(self.jobs, per_job, gpus) if per_job else [None] * self.jobs
        threads = self.cpus_per_job
        if threads is None and self.jobs > 1:
            threads = max(1, (os.cpu_count() or 1) // self.jobs)
        cells = make_cells(grid, out, todo, gpus=max(1, per_job), threads=threads)
        if self.jobs == 1 and max(1, per_job) == 1:
            self._in_process(cells, log)
        else:
            self._in_processes(cells, slots, log)

    @staticmethod
    def _in_process(cells: Sequence[Cell], log: Callable[[str], None]) -> None:
        from medseg.study import objective

        for index, cell in enumerate(cells, start=1):
            job_id = f"local-{uuid.uuid4().hex[:8]}"
            records.clear(cell.out, cell.spec)
            holder = records.this_process()
            records.write_submission(cell.out, cell.spec, "local", job_id, "(this process's output)", holder)
            log(f"[{index}/{len(cells)}] {objective(cell.weights)}: {cell.folder}")
            run_cell(cell, job_id)

    @staticmethod
    def _in_processes(cells: Sequence[Cell], slots: Sequence[str | None], log: Callable[[str], None]) -> None:
        pending = deque(enumerate(cells, start=1))
        running: dict[int, tuple[subprocess.Popen, int, Cell, Path]] = {}  # slot → process, number, cell, log
        failed: list[str] = []
        try:
            while pending or running:
                for slot, devices in enumerate(slots):
                    if slot not in running and pending:
                        number, cell = pending.popleft()
                        running[slot] = (_start(cell, devices), number, cell, cell.job_dir / "log.txt")
                        where = f" on GPU {devices}" if devices else ""
                        log(f"[{number}/{len(cells)}] started{where}: {cell.folder} (log {cell.job_dir / 'log.txt'})")
                for slot, (process, number, cell, log_path) in list(running.items()):
                    code = process.poll()
                    if code is None:
                        continue
                    del running[slot]
                    if code == 0:
                        log(f"[{number}/{len(cells)}] done: {cell.folder}")
                    else:
                        failed.append(f"  {cell.folder}: exit status {code}, log {log_path}")
                        log(f"[{number}/{len(cells)}] FAILED (exit status {code}): {cell.folder}, log {log_path}")
                time.sleep(0.2)
        finally:
            for process, *_ in running.values():
                process.terminate()
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(cells)} cells failed:\n" + "\n".join(failed) + "\nthe other cells finished; "
                "run the same command again to redo the failed ones, or add --tables-only for tables of what is done"
            )


def _start(cell: Cell, devices: str | None) -> subprocess.Popen:
    """Start ``python -m medseg.launch.cell`` for ``cell`` on ``devices``, its output in its ``log.txt``."""
    job_id = f"local-{uuid.uuid4().hex[:8]}"
    cell.job_dir.mkdir(parents=True, exist_ok=True)
    pickled = cell.job_dir / "cell.pkl"
    pickled.write_bytes(pickle.dumps(cell))
    env = dict(os.environ)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    if cell.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(cell.threads)
    log_path = cell.job_dir / "log.txt"
    records.clear(cell.out, cell.spec)
    records.write_submission(cell.out, cell.spec, "local", job_id, log_path, records.this_process())
    with open(log_path, "ab") as output:
        command = [sys.executable, "-m", "medseg.launch.cell", str(pickled), job_id]
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
