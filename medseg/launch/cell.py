"""One grid cell as a job: train, predict and score it through :func:`medseg.study.run_one`, recording its state.

:func:`run_cell` is the body of every job, whichever launcher started it. A job that starts for the first time
trains from scratch (``run_one`` deletes an interrupted folder); the same job started again (submitit's requeue
after a preemption or a timeout, or SLURM's own requeue after a node failure: its ``state.json`` names the same
job id) resumes from the bundle's newest readable checkpoint, which continues the training bit for bit
(docs/cluster.md). With more than one GPU per job or more than one node, the training runs under ``torchrun``
(:class:`TorchrunTraining`); prediction and scoring stay in the job's own process on the first node.

``python -m medseg.launch.cell CELL.pkl JOB_ID`` runs a pickled :class:`Cell` (the local launcher's processes).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.launch import records

__all__ = ["Cell", "TorchrunTraining", "make_cells", "run_cell", "stop_training"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One grid cell as a job.

    Args:
        spec: the cell (:class:`medseg.study.RunSpec`).
        out: the study folder; the run folder is ``spec.folder(out)``, the records ``records.job_dir(out, spec)``.
        dataset: the dataset folder (written before any job starts).
        overrides: the bundle's config overrides for every run of the grid.
        weights: the loss weights the cell trains (recorded in ``done.json``).
        gpus: training processes per node, one per GPU; more than one trains under ``torchrun``.
        nodes: nodes of the job; more than one trains under ``torchrun`` with a c10d rendezvous.
        threads: torch's CPU threads in the job (None: torch's default).
    """

    spec: Any
    out: Path
    dataset: Path
    overrides: Mapping[str, Any]
    weights: Mapping[str, float]
    gpus: int = 1
    nodes: int = 1
    threads: int | None = None

    @property
    def folder(self) -> Path:
        return self.spec.folder(self.out)

    @property
    def job_dir(self) -> Path:
        return records.job_dir(self.out, self.spec)

    def training(self) -> TorchrunTraining | None:
        """How the cell trains: None (in the job's process, :func:`medseg.bundles.train`) or under ``torchrun``."""
        if self.gpus <= 1 and self.nodes <= 1:
            return None
        return TorchrunTraining(self.gpus, self.nodes, self.job_dir)


def make_cells(
    grid: Any,
    out: Path,
    todo: Sequence[tuple[Any, Mapping[str, float]]],
    gpus: int = 1,
    nodes: int = 1,
    threads: int | None = None,
) -> list[Cell]:
    """The cells of ``todo`` (spec, loss weights) of ``grid``, each bundle's dataset written once, here."""
    from medseg.study import dataset_for

    cells = []
    for spec, weights in todo:
        dataset = dataset_for(grid, spec.bundle, out)
        overrides = dict(grid.overrides.get(spec.bundle, {}))
        cells.append(Cell(spec, Path(out), dataset, overrides, dict(weights), gpus, nodes, threads))
    return cells


def run_cell(cell: Cell, job_id: str, node: int = 0) -> dict[str, Any] | None:
    """Run ``cell`` as job ``job_id``: its record says ``running``, then ``done``, ``failed`` (the error) or
    ``interrupted`` (Ctrl-C).

    A restart of the same job (its ``state.json`` names ``job_id``) resumes from the run folder's checkpoints
    when there are any. ``node`` > 0 (another node of a multi-node job) runs only its share of the training.
    Returns the run's ``done.json`` summary (None on other nodes).
    """
    import torch

    from medseg.study import run_one

    if cell.threads:
        torch.set_num_threads(cell.threads)
    spec, training = cell.spec, cell.training()
    if node != 0:  # its ranks join the first node's torchrun; that node deletes or resumes the folder first
        assert training is not None, "a job of several nodes trains under torchrun"
        config = {**cell.overrides, **dict(spec.setting), "seed": spec.seed}
        training(spec.bundle, spec.loss, cell.folder, dataset_dir=str(cell.dataset), resume=True, **config)
        return None
    from medseg.checkpoint import epoch_checkpoints

    previous = records.read_state(cell.out, spec, job_id)
    attempt = int(previous.get("attempt", 0)) + 1 if previous else 1
    resume = attempt > 1 and bool(epoch_checkpoints(cell.folder / "models"))
    records.write_state(cell.out, spec, job_id, "running", attempt=attempt, resumed=resume)
    how = f"resuming from its checkpoints (attempt {attempt})" if resume else "from scratch"
    logger.info("job %s: %s in %s, %s", job_id, spec.describe(), cell.folder, how)
    job = {"id": job_id, "host": socket.gethostname(), "attempt": attempt, "resumed": resume}
    try:
        summary = run_one(
            spec, cell.folder, cell.dataset, cell.overrides, cell.weights,
            resume=resume, trainer=training, record={"job": job},
        )  # fmt: skip
    except (Exception, KeyboardInterrupt) as error:  # not SystemExit: submitit's requeue exits that way
        from medseg.console import error_message

        ended = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        records.write_state(cell.out, spec, job_id, ended, attempt=attempt, error=error_message(error))
        raise
    records.write_state(cell.out, spec, job_id, "done", attempt=attempt)
    logger.info("job %s: done, %s", job_id, cell.folder / "done.json")
    return summary


#: torchrun processes started by this process (a preempted job stops them before it exits).
_TORCHRUN: list[subprocess.Popen] = []


@dataclass(frozen=True)
class TorchrunTraining:
    """:func:`medseg.bundles.train` under ``torchrun``: the bundle's ``train.json``, the loss overlay and its
    ``multi_gpu_train.json`` (DDP, a ``DistributedSampler``, checkpoints and logs from rank 0), one process per GPU.

    One node: ``torchrun --standalone --nproc_per_node=G``. Several nodes (a submitit job with one task per node):
    ``torchrun --nnodes=N --rdzv_backend=c10d --rdzv_endpoint=<first node>:<port> --rdzv_id=<job id>``, the nodes
    and job id from submitit's ``JobEnvironment`` (``MASTER_PORT`` if set, else a port derived from the job id).
    The overrides go to ``monai.bundle run`` in an ``--args_file`` (typed JSON: ``false`` stays a bool).

    Args:
        nproc_per_node: processes (GPUs) per node.
        nnodes: nodes.
        args_dir: where the args file is written (one per host).
    """

    nproc_per_node: int
    nnodes: int
    args_dir: Path

    def rendezvous(self) -> list[str]:
        """torchrun's options that bring the nodes' processes together."""
        if self.nnodes == 1:
            return ["--standalone", "--nnodes=1"]
        from submitit import JobEnvironment

        env = JobEnvironment()
        if env.num_nodes != self.nnodes:
            raise RuntimeError(f"the job runs on {env.num_nodes} node(s), but its cell trains on {self.nnodes}")
        port = os.environ.get("MASTER_PORT") or str(20000 + zlib.crc32(env.job_id.encode()) % 20000)
        endpoint = f"--rdzv_endpoint={env.hostnames[0]}:{port}"
        return [f"--nnodes={self.nnodes}", "--rdzv_backend=c10d", endpoint, f"--rdzv_id={env.job_id}"]

    def command(self, args_file: Path) -> list[str]:
        """The ``torchrun`` command line (as ``python -m torch.distributed.run``) for ``args_file``."""
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *self.rendezvous(),
            f"--nproc_per_node={self.nproc_per_node}",
            "-m",
            "monai.bundle",
            "run",
            "--args_file",
            str(args_file),
        ]

    def __call__(self, bundle: str, loss: str, bundle_root: str | Path, **overrides: Any) -> Path:
        """Train like :func:`medseg.bundles.train` (same arguments); raises when torchrun fails."""
        from medseg.bundles import bundle_configs, loss_overlay
        from medseg.checkpoint import atomic_write_text

        configs = bundle_configs(bundle)
        files = [configs / "train.json", loss_overlay(loss), configs / "multi_gpu_train.json"]
        args = {"config_file": [str(f) for f in files], "logging_file": str(configs / "logging.conf")}
        args |= {"bundle_root": str(bundle_root), **overrides}
        self.args_dir.mkdir(parents=True, exist_ok=True)
        args_file = self.args_dir / f"torchrun_args.{socket.gethostname()}.json"
        atomic_write_text(args_file, json.dumps(args, indent=1, default=str))
        command = self.command(args_file)
        logger.info("training under torchrun: %s", " ".join(command))
        process = subprocess.Popen(command)
        _TORCHRUN.append(process)
        try:
            code = process.wait()
        finally:
            _TORCHRUN.remove(process)
        if code != 0:
            raise RuntimeError(f"torchrun training in {bundle_root} exited with status {code} (its log is above)")
        return Path(bundle_root)


def stop_training(timeout_s: float = 60.0) -> None:
    """Stop the torchrun processes this process started (a preempted job does so before it exits)."""
    for process in list(_TORCHRUN):
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medseg.launch.cell CELL.pkl JOB_ID``: run a pickled :class:`Cell` as job ``JOB_ID``."""
    from medseg.console import console

    path, job_id = sys.argv[1:] if argv is None else argv
    with open(path, "rb") as file:
        cell = pickle.load(file)
    with console(verbose=True):
        run_cell(cell, job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
