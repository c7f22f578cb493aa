"""``medseg compare`` beyond one process: each grid cell as a job of its own (docs/cluster.md).

* :mod:`medseg.launch.resources`: what each job asks for (``--gpus-per-job``, ``--timeout-min``, a YAML/JSON file)
  and the launcher options of the command line.
* :mod:`medseg.launch.records`: each cell's job records under ``<out>/jobs/`` (written atomically) and the grid's
  state for ``medseg compare --status``: todo, queued, running, done, failed (with the log), interrupted, stale.
* :mod:`medseg.launch.cell`: the job body, :func:`~medseg.launch.cell.run_cell` (one cell trained, predicted and
  scored through :func:`medseg.study.run_one`; a restart of the same job resumes from the bundle's checkpoint), and
  :class:`~medseg.launch.cell.TorchrunTraining` (the bundle under ``torchrun`` with ``multi_gpu_train.json``).
* :mod:`medseg.launch.local`: ``--launcher local``: the cells one after another in this process, or ``--jobs K``
  at once, each in its own process pinned to its GPUs.
* :mod:`medseg.launch.cluster`: ``--launcher submitit``: one SLURM job (array task) per cell through ``submitit``
  (the optional extra ``medseg[cluster]``); preempted and timed-out jobs resubmit themselves and resume.
"""
