"""What each job of a study grid asks for, from ``medseg compare``'s options or a YAML/JSON file.

One grid cell is one job. :class:`Resources` holds its request; :func:`add_launch_arguments` adds the launcher
options to the study's parser and :func:`launcher_from_args` turns them into a launcher
(:class:`medseg.launch.local.LocalLauncher` or :class:`medseg.launch.cluster.SubmititLauncher`).
:meth:`Resources.submitit_parameters` maps the request to ``submitit.AutoExecutor.update_parameters``, which
writes the sbatch script (docs/cluster.md has the table of what each option becomes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.console import UserError

__all__ = ["LAUNCHERS", "Resources", "add_launch_arguments", "launcher_from_args", "read_resources"]

#: ``--launcher``: ``local`` (this machine; the default) or ``submitit`` (SLURM through submitit).
LAUNCHERS = ("local", "submitit")
#: ``--submitit-cluster``: ``slurm``, or ``local`` (the same submitit code path with jobs as local processes).
SUBMITIT_CLUSTERS = ("slurm", "local")


@dataclass(frozen=True)
class Resources:
    """The request of one job (one grid cell).

    Args:
        gpus_per_job: GPUs of a job on each of its nodes; more than one trains the bundle under ``torchrun`` with
            its ``multi_gpu_train.json`` (one process per GPU). None: 1 on SLURM; the local launcher uses 1 when the
            machine has GPUs, else the CPU.
        cpus_per_job: CPU cores of a job (SLURM ``--cpus-per-task``); torch's CPU threads in the job.
        mem_gb: memory of a job on each node (SLURM ``--mem``).
        timeout_min: wall time of a job in minutes (SLURM ``--time``); a job that reaches it resubmits itself and
            resumes from its checkpoint, at most ``max_timeouts`` times.
        nnodes: nodes of a job: training under ``torchrun`` across them (c10d rendezvous on the first node).
        array_parallelism: at most this many jobs of the grid's job array run at once (SLURM ``--array=…%N``).
        max_timeouts: how often a job that hit ``timeout_min`` resubmits itself (preemptions always resubmit).
        slurm_partition, slurm_account, slurm_qos, slurm_constraint: SLURM's ``--partition``, ``--account``,
            ``--qos``, ``--constraint``.
        slurm_setup: shell lines the sbatch script runs before the job (``module load …``, activating a venv).
        slurm_additional: further sbatch options, e.g. ``{"mail-type": "END"}``.
    """

    gpus_per_job: int | None = None
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    timeout_min: int | None = None
    nnodes: int = 1
    array_parallelism: int | None = None
    max_timeouts: int = 3
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_qos: str | None = None
    slurm_constraint: str | None = None
    slurm_setup: tuple[str, ...] = ()
    slurm_additional: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("cpus_per_job", "timeout_min", "nnodes", "array_parallelism"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UserError(f"{_flag(name)} takes a whole number of at least 1, got {value!r}")
        for name in ("gpus_per_job", "max_timeouts"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise UserError(f"{_flag(name)} takes a whole number of at least 0, got {value!r}")
        if self.mem_gb is not None and (isinstance(self.mem_gb, bool) or not self.mem_gb > 0):
            raise UserError(f"--mem-gb takes a positive number, got {self.mem_gb!r}")

    @property
    def processes_per_node(self) -> int:
        """Training processes of a job on each node: one per GPU (at least one)."""
        return max(1, self.gpus_per_job or 0)

    def submitit_parameters(self, name: str) -> dict[str, Any]:
        """The parameters of ``submitit.AutoExecutor.update_parameters`` for jobs called ``name``: one task per node
        (it starts ``torchrun`` for the node's GPUs), stdout and stderr in one log."""
        parameters: dict[str, Any] = {
            "name": name,
            "nodes": self.nnodes,
            "tasks_per_node": 1,
            "gpus_per_node": 1 if self.gpus_per_job is None else self.gpus_per_job,
            "stderr_to_stdout": True,
            "timeout_min": self.timeout_min,
            "cpus_per_task": self.cpus_per_job,
            "mem_gb": self.mem_gb,
        }
        slurm = {
            "partition": self.slurm_partition,
            "account": self.slurm_account,
            "qos": self.slurm_qos,
            "constraint": self.slurm_constraint,
            "array_parallelism": self.array_parallelism,
            "setup": list(self.slurm_setup) or None,
            "additional_parameters": dict(self.slurm_additional) or None,
        }
        parameters |= {f"slurm_{key}": value for key, value in slurm.items()}
        return {key: value for key, value in parameters.items() if value is not None}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: Options of :class:`Resources` that only the submitit launcher reads.
_SUBMITIT_ONLY = (
    "mem_gb",
    "timeout_min",
    "nnodes",
    "array_parallelism",
    "max_timeouts",
    "slurm_partition",
    "slurm_account",
    "slurm_qos",
    "slurm_constraint",
    "slurm_setup",
    "slurm_additional",
)


def read_resources(path: str | Path) -> dict[str, Any]:
    """The job request in a YAML (``.yaml``/``.yml``) or JSON file: a mapping of :class:`Resources` field names
    (``slurm_partition: gpu``, ``timeout_min: 720``...), checked for unknown names."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no resources file {path}", hint="--resources takes a YAML or JSON file (docs/cluster.md)")
    import yaml

    is_yaml = path.suffix in (".yaml", ".yml")
    try:
        content = yaml.safe_load(path.read_text()) if is_yaml else json.loads(path.read_text())
    except (ValueError, yaml.YAMLError) as error:
        raise UserError(f"{path} is not valid {'YAML' if is_yaml else 'JSON'}: {error}") from error
    if not isinstance(content, dict):
        raise UserError(f"{path} must hold a mapping of resource names to values, got {type(content).__name__}")
    known = [f.name for f in dataclasses.fields(Resources)]
    unknown = sorted(set(content) - set(known))
    if unknown:
        raise UserError(f"{path}: unknown resource name(s) {unknown}", hint=f"known names: {', '.join(known)}")
    if "slurm_setup" in content:
        content["slurm_setup"] = tuple(content["slurm_setup"] or ())
    return content


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """``medseg compare``'s options for where the cells run, what each job asks for, and the grid's state."""
    group = parser.add_argument_group("launching the grid (docs/cluster.md)")
    group.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default=LAUNCHERS[0],
        help="local (default): this machine; submitit: one SLURM job per grid cell (pip install medseg[cluster])",
    )
    group.add_argument(
        "--jobs", type=int, default=1, metavar="K", help="local: run K cells at once, each in its own process"
    )
    group.add_argument(
        "--submitit-cluster",
        choices=SUBMITIT_CLUSTERS,
        help="submitit: slurm (default) or local (the same jobs as processes of this machine, to try the set-up)",
    )
    group.add_argument("--resources", metavar="FILE", help="a YAML or JSON file of the options below (they win)")
    group.add_argument(
        "--gpus-per-job", type=int, metavar="G", help="GPUs per job (per node); >1 trains under torchrun"
    )
    group.add_argument(
        "--cpus-per-job", type=int, metavar="C", help="CPU cores per job: SLURM --cpus-per-task, torch threads"
    )
    group.add_argument(
        "--mem-gb", type=float, metavar="GB", help="submitit: memory per job and node in GB (SLURM --mem)"
    )
    group.add_argument(
        "--timeout-min",
        type=int,
        metavar="MIN",
        help="submitit (required): wall time per job in minutes (SLURM --time)",
    )
    group.add_argument(
        "--nnodes", type=int, metavar="N", help="submitit: nodes per job, trained under torchrun (rendezvous)"
    )
    group.add_argument("--array-parallelism", type=int, metavar="P", help="submitit: at most this many jobs at once")
    group.add_argument("--max-timeouts", type=int, metavar="K", help="submitit: resubmissions after timeouts (3)")
    group.add_argument("--slurm-partition", metavar="NAME", help="SLURM --partition")
    group.add_argument("--slurm-account", metavar="NAME", help="SLURM --account")
    group.add_argument("--slurm-qos", metavar="NAME", help="SLURM --qos")
    group.add_argument("--slurm-constraint", metavar="FEATURES", help="SLURM --constraint")
    group.add_argument(
        "--wait", action="store_true", help="submitit: wait for the jobs, then write the tables and plots"
    )
    group.add_argument(
        "--status", action="store_true", help="show each cell's state (queued, running, done, failed, log); run nothing"
    )
    group.add_argument(
        "--tables-only",
        action="store_true",
        help="write the tables and plots from the finished runs now (the grid may be incomplete); run nothing",
    )


def resources_from_args(args: argparse.Namespace) -> Resources:
    """:class:`Resources` from ``--resources FILE`` overridden by the options given on the command line."""
    values = read_resources(args.resources) if args.resources else {}
    for spec in dataclasses.fields(Resources):
        given = getattr(args, spec.name, None)
        if given is not None:
            values[spec.name] = given
    return Resources(**values)


def launcher_from_args(args: argparse.Namespace):
    """The launcher the options ask for, after checking that each option applies to it."""
    resources = resources_from_args(args)
    if args.jobs < 1:
        raise UserError(f"--jobs takes a whole number of at least 1, got {args.jobs}")
    if args.launcher == "local":
        given = [
            _flag(name)
            for name in _SUBMITIT_ONLY
            if getattr(resources, name) != getattr(Resources(), name) or getattr(args, name, None) is not None
        ]
        given += ["--wait"] if args.wait else []
        given += ["--submitit-cluster"] if args.submitit_cluster else []
        if given:
            raise UserError(
                f"{', '.join(given)} apply to --launcher submitit only",
                hint="add --launcher submitit, or leave them out to run on this machine",
            )
        from medseg.launch.local import LocalLauncher

        return LocalLauncher(jobs=args.jobs, gpus_per_job=resources.gpus_per_job, cpus_per_job=resources.cpus_per_job)
    if args.jobs != 1:
        raise UserError(
            "--jobs applies to --launcher local only",
            hint="with submitit every cell is a job of its own; --array-parallelism caps how many run at once",
        )
    from medseg.launch.cluster import SubmititLauncher

    return SubmititLauncher(resources, cluster=args.submitit_cluster or "slurm", wait=args.wait)
