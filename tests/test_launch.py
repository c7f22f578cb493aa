"""The study's launchers (medseg.launch): job records and states, the sbatch script submitit writes (a fake sbatch,
srun and sacct on PATH: no cluster), torchrun's command line; then real jobs on a 2-cell tiny grid: submitit's
LocalExecutor (the SLURM code path, jobs as processes) with one job preempted mid-run, ``--jobs 2`` processes, and
one cell trained under torchrun, each compared with the sequential run of the same cells."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import submitit

from medseg import study
from medseg.bundles import CPU_UNET3D
from medseg.console import UserError
from medseg.data.synthetic import make_synapse
from medseg.launch import records
from medseg.launch.cell import Cell, TorchrunTraining, run_cell
from medseg.launch.cluster import SubmititLauncher
from medseg.launch.local import gpu_slots, visible_gpus
from medseg.launch.resources import Resources, read_resources
from tests._sizes import TINY_UNET3D

#: A tiny run: 6 epochs of 2 iterations (a 3-level UNet on 16³ patches of 12 × 12 × 24 mm voxels), seconds on a core.
TINY = {**TINY_UNET3D, "max_epochs": 6, "val_interval": 2}
LOSSES = ["dice", "tversky"]  # no preset settings: 2 cells


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Raw BTCV layout, 2 training, 1 validation and 2 test cases."""
    return make_synapse(tmp_path_factory.mktemp("btcv"), layout="btcv", cases=5, size=32, seed=0, datalist=True)


def tiny_grid(dataset: Path, losses=LOSSES) -> study.Grid:
    """The tiny preset's CPU size (``CPU_UNET3D``) made tinier (``TINY``), on ``dataset``."""
    overrides = {"synapse_unet3d": CPU_UNET3D | TINY}
    return study.Grid(["synapse_unet3d"], losses, [0], overrides=overrides, datasets={"synapse_unet3d": dataset})


def cli_grid(out: Path, dataset: Path) -> list[str]:
    """``medseg compare`` options for :func:`tiny_grid` (the tiny preset gives ``CPU_UNET3D``)."""
    overrides = [f"{key}={json.dumps(value)}" for key, value in TINY.items()]
    return ["--out", str(out), "--data", f"synapse_unet3d={dataset}", "--losses", *LOSSES, "--override", *overrides]


# --- resources and options --------------------------------------------------------------------------------------


def test_resources_file_then_options(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("slurm_partition: gpu\ntimeout_min: 600\ngpus_per_job: 2\nslurm_setup: [module load cuda]\n")
    parser = study.build_parser()
    args = parser.parse_args(["--launcher", "submitit", "--resources", str(path), "--timeout-min", "90"])
    from medseg.launch.resources import resources_from_args

    resources = resources_from_args(args)
    assert (resources.slurm_partition, resources.gpus_per_job, resources.slurm_setup) == (
        "gpu",
        2,
        ("module load cuda",),
    )
    assert resources.timeout_min == 90  # the command line wins over the file

    path.write_text("slurm_partiton: gpu\n")
    with pytest.raises(UserError, match=r"site\.yaml: unknown resource name\(s\) \['slurm_partiton'\]") as info:
        read_resources(path)
    assert "slurm_partition" in info.value.hint
    path.write_text("timeout_min: [1\n")
    with pytest.raises(UserError, match=r"site\.yaml is not valid YAML"):
        read_resources(path)
    with pytest.raises(UserError, match="--timeout-min takes a whole number of at least 1, got 0"):
        Resources(timeout_min=0)


def test_options_that_do_not_apply_are_refused(tmp_path):
    from medseg.launch.resources import launcher_from_args

    def launcher(*options):
        return launcher_from_args(study.build_parser().parse_args(list(options)))

    with pytest.raises(UserError, match="--timeout-min, --slurm-partition apply to --launcher submitit only"):
        launcher("--timeout-min", "60", "--slurm-partition", "gpu")
    with pytest.raises(UserError, match="--jobs applies to --launcher local only"):
        launcher("--launcher", "submitit", "--jobs", "2")
    with pytest.raises(UserError, match="needs --timeout-min"):
        launcher("--launcher", "submitit").executor(tmp_path)
    with pytest.raises(UserError, match="--status and --tables-only exclude each other"):
        study.main(["--out", str(tmp_path), "--status", "--tables-only"])
    with pytest.raises(UserError, match="no finished run of this grid"):
        study.main(["--out", str(tmp_path), "--losses", "dice", "--tables-only"])


def test_gpu_slots_pin_each_parallel_job_to_its_own_gpus(monkeypatch):
    assert gpu_slots(2, 2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert gpu_slots(3, 1, ["0", "1", "2", "3"]) == ["0", "1", "2"]
    with pytest.raises(UserError, match=r"--jobs 3 × --gpus-per-job 2 needs 6 GPUs; this machine shows 4"):
        gpu_slots(3, 2, ["0", "1", "2", "3"])
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus() == ["3", "5"]  # the GPUs this process was given, by their machine numbers
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1"]


# --- records and states (no training) -----------------------------------------------------------------------------


def dead_pid() -> dict:
    """The process record of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE)
    pid = int(process.communicate()[0])
    return records.this_process() | {"pid": pid, "process_start": "gone"}


def test_cell_states_from_the_records(tmp_path, dataset):
    grid = tiny_grid(dataset, ["dice"])
    (spec,) = grid.runs()
    out = tmp_path
    state = lambda: records.cell_state(out, spec)  # noqa: E731
    assert state().state == "todo"
    spec.folder(out).mkdir(parents=True)
    assert state().state == "interrupted"

    records.write_submission(out, spec, "local", "job-1", "the.log", records.this_process())
    assert (state().state, state().job_id, state().log) == ("queued", "job-1", "the.log")
    records.write_state(out, spec, "job-0", "failed", error="from an earlier job")
    assert state().state == "queued"  # another job's state does not count
    records.write_state(out, spec, "job-1", "running", attempt=1)
    assert state().state == "running"  # this process runs it
    plan = study.run_grid(grid, out)  # a cell whose job lives is left alone
    assert plan[["status", "action"]].values.tolist() == [["running", "wait"]] and spec.folder(out).is_dir()

    stamp = records.job_dir(out, spec) / records.STATE
    stamp.write_text(json.dumps(json.loads(stamp.read_text()) | {"process": dead_pid()}))
    gone = state()
    assert gone.state == "failed" and "ended without finishing the run" in gone.detail and gone.log == "the.log"
    assert study.run_grid(grid, out, dry_run=True).action.tolist() == ["redo"]

    records.write_state(out, spec, "job-1", "requeued", attempt=1)
    assert (state().state, state().detail) == ("queued", "preempted or timed out, queued again (attempt 2 next)")
    records.write_state(out, spec, "job-1", "failed", attempt=1, error="RuntimeError: out of memory")
    assert (state().state, state().detail) == ("failed", "RuntimeError: out of memory")


def test_a_restart_of_the_same_job_resumes_and_an_error_is_recorded(tmp_path, dataset, monkeypatch):
    (spec,) = tiny_grid(dataset, ["dice"]).runs()
    cell = Cell(spec, tmp_path, dataset, {}, {"ce": 0.5, "dice": 0.5})
    calls = []

    def run_one(*args, resume, record, **kwargs):
        calls.append((resume, record["job"]["attempt"]))
        raise SystemExit(144)  # how submitit's requeue leaves a job (after the job recorded `requeued`)

    monkeypatch.setattr(study, "run_one", run_one)
    with pytest.raises(SystemExit):
        run_cell(cell, "job-1")
    assert records.read_state(tmp_path, spec)["state"] == "running"  # not `failed`: the job is being requeued
    (spec.folder(tmp_path) / "models").mkdir(parents=True)
    (spec.folder(tmp_path) / "models" / "last_checkpoint_epoch=3.pt").touch()
    with pytest.raises(SystemExit):
        run_cell(cell, "job-1")  # the same job started again: resume
    with pytest.raises(SystemExit):
        run_cell(cell, "job-2")  # a new job (a new submission): from scratch
    assert calls == [(False, 1), (True, 2), (False, 1)]

    def fails(*args, **kwargs):
        raise FileNotFoundError("no image case7.nii.gz")

    monkeypatch.setattr(study, "run_one", fails)
    with pytest.raises(FileNotFoundError):
        run_cell(cell, "job-3")
    state = records.read_state(tmp_path, spec)
    assert (state["job_id"], state["state"], state["error"]) == (
        "job-3",
        "failed",
        "FileNotFoundError: no image case7.nii.gz",
    )

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "run_one", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, "job-4")
    assert records.cell_state(tmp_path, spec).state == "interrupted"  # Ctrl-C: redone, like a stopped study


def test_status_shows_each_cell_with_its_log(tmp_path, dataset, capsys):
    grid = tiny_grid(dataset)
    first = grid.runs()[0]
    records.write_submission(tmp_path, first, "local", "job-7", tmp_path / "job-7.log", records.this_process())
    records.write_state(tmp_path, first, "job-7", "failed", attempt=1, error="ValueError: bad label")
    argv = cli_grid(tmp_path, dataset)
    assert study.main([*argv, "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["bundle", "loss", "setting", "seed", "state", "job", "attempt", "log", "detail"]
    assert lines[1].split()[1:8] == ["ce+dice", "default", "0", "failed", "job-7", "1", str(tmp_path / "job-7.log")]
    assert lines[1].endswith("ValueError: bad label") and lines[2].split()[1:] == ["ce+tversky", "default", "0", "todo"]
    assert lines[-1] == "2 cells: 1 failed, 1 todo"
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_resumed_run_keeps_the_last_value_of_each_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    first = SummaryWriter(tmp_path)
    for step, value in ((1, 0.9), (2, 0.8), (3, 0.75)):
        first.add_scalar("train_loss", value, step)
    first.close()
    time.sleep(1.1)  # event files are named by the second they were opened in
    resumed = SummaryWriter(tmp_path)  # continued from the checkpoint after step 2: step 3 again
    for step, value in ((3, 0.7), (4, 0.6)):
        resumed.add_scalar("train_loss", value, step)
    resumed.close()
    curves = study.read_curves(tmp_path)
    assert curves.step.tolist() == [1, 2, 3, 4] and curves.value.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])


# --- the sbatch script (fake SLURM commands) -------------------------------------------------------------------


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``sbatch`` (answers job 4242), ``srun`` (so that submitit sees a cluster) and ``sacct`` (prints the file
    ``sacct.txt``) on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "sbatch": 'echo "Submitted batch job 4242"',
        "srun": "exit 0",
        "sacct": f'cat "{bin_dir / "sacct.txt"}"',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    submitit.SlurmJob.watcher.clear()
    yield bin_dir
    submitit.SlurmJob.watcher.clear()


def sbatch_options(script: str) -> dict[str, str]:
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            options[key] = value
    return options


def test_a_grid_becomes_a_job_array_with_the_requested_resources(tmp_path, dataset, fake_slurm):
    grid = tiny_grid(dataset, ["dice", "tversky", "focal"])
    resources = Resources(
        gpus_per_job=2,
        cpus_per_job=8,
        mem_gb=64,
        timeout_min=720,
        array_parallelism=2,
        slurm_partition="gpu",
        slurm_account="lab",
        slurm_setup=("module load cuda/12.4",),
        slurm_additional={"mail-type": "END"},
    )
    out = tmp_path / "study"
    study.run_grid(grid, out, launcher=SubmititLauncher(resources))
    (script_path,) = (out / "jobs" / "submitit").rglob("*_submission.sh")
    script = script_path.read_text()
    options = sbatch_options(script)
    assert {key: options[key] for key in ("partition", "account", "time", "gpus-per-node", "cpus-per-task")} == {
        "partition": "gpu",
        "account": "lab",
        "time": "720",
        "gpus-per-node": "2",
        "cpus-per-task": "8",
    }
    assert (options["mem"], options["nodes"], options["ntasks-per-node"]) == ("64GB", "1", "1")
    assert options["array"] == "0-2%2" and options["mail-type"] == "END" and options["signal"].startswith("USR2@")
    assert options["output"] == str(out.resolve() / "jobs" / "submitit" / "%A_%a" / "%A_%a_0_log.out")
    assert "error" not in options  # stdout and stderr in one log
    assert options["job-name"] == "medseg-study"
    assert "module load cuda/12.4" in script and "-m submitit.core._submit" in script.rstrip().splitlines()[-1]

    # each array task carries its own cell, as a submitit Checkpointable
    for index, spec in enumerate(grid.runs()):
        delayed = submitit.helpers.DelayedSubmission.load(
            out / "jobs" / "submitit" / f"4242_{index}" / f"4242_{index}_submitted.pkl"
        )
        assert isinstance(delayed.function, submitit.helpers.Checkpointable)
        assert delayed.function.cell.spec == spec and delayed.function.cell.gpus == 2
        submission = records.read_submission(out, spec)
        assert (submission["job_id"], submission["cluster"]) == (f"4242_{index}", "slurm")

    # the grid's state, as sacct tells it; cells whose job still exists are not submitted again
    (fake_slurm / "sacct.txt").write_text(
        "JobID|State|NodeList\n4242_0|PENDING|\n4242_1|RUNNING|gpu07\n4242_2|OUT_OF_MEMORY|gpu08\n"
    )
    status = records.grid_status(grid, out)
    assert status.state.tolist() == ["queued", "running", "failed"]
    assert "SLURM: OUT_OF_MEMORY" in status.detail[2] and status.log[2].endswith("4242_2/4242_2_0_log.out")
    plan = study.run_grid(grid, out, dry_run=True)
    assert plan.action.tolist() == ["wait", "wait", "redo"]


def test_a_job_of_two_nodes_asks_each_for_its_gpus(tmp_path, dataset, fake_slurm):
    resources = Resources(gpus_per_job=4, nnodes=2, timeout_min=60, slurm_partition="gpu")
    study.run_grid(tiny_grid(dataset, ["dice"]), tmp_path, launcher=SubmititLauncher(resources))
    (script_path,) = (tmp_path / "jobs" / "submitit").rglob("*_submission.sh")
    options = sbatch_options(script_path.read_text())
    assert (options["nodes"], options["ntasks-per-node"], options["gpus-per-node"]) == ("2", "1", "4")
    assert "array" not in options


def test_torchrun_command_from_submitits_job_environment(tmp_path, monkeypatch):
    single = TorchrunTraining(2, 1, tmp_path).command(tmp_path / "args.json")
    launch = ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    assert single[1:] == [*launch, "-m", "monai.bundle", "run", "--args_file", str(tmp_path / "args.json")]
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "gpu[03-04]"}
    slurm |= {"SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    commands = []
    for node in ("0", "1"):
        monkeypatch.setenv("SLURM_NODEID", node)
        monkeypatch.setenv("SLURM_PROCID", node)
        commands.append(TorchrunTraining(4, 2, tmp_path).command(tmp_path / "args.json"))
    assert commands[0] == commands[1]  # both nodes meet at the same place
    options = commands[0][3:7]
    assert options[:2] == ["--nnodes=2", "--rdzv_backend=c10d"] and options[3] == "--rdzv_id=77"
    host, port = options[2].removeprefix("--rdzv_endpoint=").split(":")
    assert host == "gpu03" and 20000 <= int(port) < 40000 and commands[0][7] == "--nproc_per_node=4"
    monkeypatch.setenv("MASTER_PORT", "29511")
    assert "--rdzv_endpoint=gpu03:29511" in TorchrunTraining(4, 2, tmp_path).command(tmp_path / "a.json")
    with pytest.raises(RuntimeError, match="the job runs on 2 node"):
        TorchrunTraining(4, 3, tmp_path).command(tmp_path / "a.json")


# --- real jobs on the tiny grid ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, dataset) -> Path:
    """The tiny grid run one cell after another in this process (torch on one thread: tests/conftest.py)."""
    out = tmp_path_factory.mktemp("sequential")
    study.run_grid(tiny_grid(dataset), out)
    study.write_outputs(out, tiny_grid(dataset))
    return out


def wait_for(condition, what: str, timeout_s: float = 600.0) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def submitted(tmp_path_factory, dataset) -> Path:
    """The tiny grid as submitit jobs (LocalExecutor: the SLURM code path, jobs as processes of this machine); the
    first job is preempted (SIGUSR2, as SLURM signals) once its first epoch checkpoint is written."""
    out = tmp_path_factory.mktemp("submitit")
    grid = tiny_grid(dataset)
    launcher = SubmititLauncher(Resources(gpus_per_job=0, cpus_per_job=1, timeout_min=60), cluster="local")
    plan = study.run_grid(grid, out, launcher=launcher)
    assert plan.action.tolist() == ["run", "run"]
    first = grid.runs()[0]
    wait_for(lambda: list((first.folder(out) / "models").glob("*_epoch=*.pt")), "the first job's first checkpoint")
    os.kill(records.read_state(out, first)["process"]["pid"], signal.SIGUSR2)
    submissions = [records.read_submission(out, spec) for spec in grid.runs()]
    results = [Path(s["log"]).with_name(f"{s['job_id']}_0_result.pkl") for s in submissions]  # submitit's, at the end
    try:
        wait_for(lambda: all(path.exists() for path in results), "the jobs to end")
    finally:  # a job left running by a failed test is ended (by its controller's pid, the job id)
        for spec in grid.runs():
            pid = int(records.read_submission(out, spec)["job_id"])
            if records.cell_state(out, spec).state in ("queued", "running"):
                os.kill(pid, signal.SIGTERM)
    return out


@pytest.mark.slow
def test_submitit_jobs_finish_and_write_the_tables_of_the_complete_grid(submitted, dataset, sequential):
    grid = tiny_grid(dataset)
    status = records.grid_status(grid, submitted)
    assert status.state.tolist() == ["done", "done"], status.to_string()
    for name in ("metrics.csv", "table3_synapse.csv"):  # written by the job that completed the grid
        pd.testing.assert_frame_equal(
            pd.read_csv(submitted / "tables" / name), pd.read_csv(sequential / "tables" / name), check_exact=True
        )
    assert not (submitted / "tables" / ".writing").exists()


@pytest.mark.slow
def test_a_preempted_job_requeues_itself_and_resumes_bit_for_bit(submitted, dataset, sequential):
    first, second = tiny_grid(dataset).runs()

    def folders(spec):
        return spec.folder(submitted), spec.folder(sequential)

    done = json.loads((first.folder(submitted) / "done.json").read_text())
    assert (done["job"]["attempt"], done["job"]["resumed"]) == (2, True)
    assert json.loads((second.folder(submitted) / "done.json").read_text())["job"]["attempt"] == 1
    log = Path(records.read_submission(submitted, first)["log"]).read_text()
    assert "this job is preempted" in log and "Requeued job" in log
    assert "resuming from" in log and "last_checkpoint_epoch=" in log
    for spec in (first, second):
        for name, keys in (("curves.csv", ["tag", "step"]), ("test_metrics.csv", ["case", "structure"])):
            # rows in one order (a resumed run's event files may list its tags in another), values bit for bit
            resumed, uninterrupted = (pd.read_csv(f / name).sort_values(keys, ignore_index=True) for f in folders(spec))
            pd.testing.assert_frame_equal(resumed, uninterrupted, check_exact=True)


@pytest.mark.slow
def test_two_local_jobs_at_once_give_the_sequential_tables(tmp_path, dataset, sequential, capsys):
    assert study.main([*cli_grid(tmp_path, dataset), "--jobs", "2", "--cpus-per-job", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count(" started: ") == 2 and out.count(" done: ") == 2
    for name in ("metrics.csv", "table3_synapse.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "tables" / name), pd.read_csv(sequential / "tables" / name), check_exact=True
        )
    for spec in tiny_grid(dataset).runs():
        log = (records.job_dir(tmp_path, spec) / "log.txt").read_text()
        assert f"{spec.folder(tmp_path)}, from scratch" in log  # each cell in its own process, with its own log


@pytest.mark.slow
def test_a_cell_trains_under_torchrun_with_two_processes(tmp_path, dataset):
    # 2 ranks need 2 validation cases (one each): 3 training cases, 2 of them held out for validation
    grid = tiny_grid(dataset, ["dice"])
    (spec,) = grid.runs()
    weights = study.trained_weights("synapse_unet3d", spec.loss, {})
    overrides = grid.overrides["synapse_unet3d"] | {"val_fraction": 0.6, "max_epochs": 2}
    cell = Cell(spec, tmp_path, dataset, overrides, weights, gpus=2)
    summary = run_cell(cell, "job-ddp")
    assert summary["job"]["id"] == "job-ddp" and (spec.folder(tmp_path) / "done.json").is_file()
    args = json.loads((cell.job_dir / f"torchrun_args.{records.this_process()['host']}.json").read_text())
    assert args["config_file"][-1].endswith("synapse_unet3d/configs/multi_gpu_train.json")
    assert args["resume"] is False and args["network_def#channels"] == [4, 8, 16]  # typed, as JSON keeps them
    checkpoint = __import__("torch").load(
        spec.folder(tmp_path) / "models" / "last_checkpoint_epoch=2.pt", weights_only=False
    )
    assert checkpoint["trainer"]["epoch_length"] == 1  # 1 training case padded to 2 ranks: one batch each
    assert len(pd.read_csv(spec.folder(tmp_path) / "test_metrics.csv")) == 2 * 8  # scored in the job's process
    assert records.cell_state(tmp_path, spec).state == "done"
