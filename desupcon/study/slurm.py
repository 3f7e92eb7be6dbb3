"""Cluster sweeps: a grid's runs as Slurm job arrays through submitit (as FAIR's self-supervised repositories do).

``submit_sweep("03_lw_supcrd_sweeps", partition="gpu")`` submits the grid in waves by dependency: the
teacher, then its projection head, then every student, each wave one job array whose tasks train one
config each (``desupcon.study.train.train``, one GPU per task). The run cache decides what is submitted,
exactly as for the local runner (``desupcon.study.sweep``): a run whose checkpoints are complete with an
equal config is never resubmitted, and a killed task resumes from its last epoch checkpoint when the
grid is submitted again. On Slurm each wave waits for the previous one with a Slurm ``dependency=afterok`` on it,
so the command returns at once; with submitit's local executor (``cluster="local"``,
``--launcher slurm-local``: a way to try a grid before submitting it, and what the tests use on CPU)
the launcher waits for each wave itself, and a failed task's line carries its own error line.
On a machine without Slurm, ``cluster="slurm"`` is refused before anything is read or submitted.

Every task sees the submitting shell's environment (``DESUPCON_HOME``, ``DESUPCON_DATA``), so it reads
and writes the same output home; submitit's own logs go to ``<home>/slurm/<job id>_<task>_log.out``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from desupcon.core.errors import ConfigError
from desupcon.core.paths import output_root
from desupcon.methods.distill.config import RunConfig
from desupcon.study.sweep import SweepError, error_line, grid_runs, is_cached, run_worker, with_upstream

SLURM_COMMANDS = ("sbatch", "srun")  # what submitit's Slurm executor runs


def check_slurm() -> None:
    """This machine can submit Slurm jobs (``SLURM_COMMANDS`` on PATH), else a one-line ``ConfigError`` with the fix."""
    missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
    if missing:
        raise ConfigError(f"--launcher slurm: this machine has no Slurm ({' and '.join(missing)} not on PATH); run "
                          f"the sweep on the cluster's login node, or try the same job arrays here with "
                          f"--launcher slurm-local")


def task_error(job, err: Exception) -> str:
    """The error line of a failed submitit ``job``: the last line of its stderr, where the task's exception
    (or Slurm's reason for killing it) is written, else the first line of the exception ``err`` submitit raised."""
    try:
        text = job.stderr()
    except OSError:
        text = None
    return error_line(text) if text and text.strip() else error_line(str(err).strip().split("\n", 1)[0])


def _depth(cfg: RunConfig) -> int:
    """How many teacher runs ``cfg`` builds on (0 for the teacher, 1 for its projection head, 2 for students)."""
    return max((1 + _depth(upstream) for upstream in cfg.upstream()), default=0)


def waves(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """The runs to submit, grouped so that every run's teacher is in an earlier wave; cached runs are left out."""
    pending = [cfg for cfg in with_upstream(configs) if not is_cached(cfg)]
    depths = sorted({_depth(cfg) for cfg in pending})
    return [[cfg for cfg in pending if _depth(cfg) == d] for d in depths]


def submit_sweep(grid, profile: str | None = None, cluster: str = "slurm", folder: str | Path | None = None,
                 partition: str | None = None, timeout_min: int = 24 * 60, gpus_per_task: int = 1,
                 cpus_per_task: int = 8, mem_gb: int = 32) -> list[dict]:
    """Submit the runs of ``grid`` as one job array per wave of ``waves``.

    Args:
        grid: a notebook or grid name of ``desupcon.study.experiments.GRIDS``, or a list of ``RunConfig``.
        profile: the profile of a named grid (default None: ``$DESUPCON_PROFILE``, then auto).
        cluster: "slurm", or "local" (submitit's local executor: every task of a wave a subprocess on this
            machine at once, without GPUs; ``--launcher slurm-local``) (default "slurm").
        folder: submitit's folder for pickles and logs (default ``<output home>/slurm``).
        partition: the Slurm partition (default None: the cluster's default).
        timeout_min: time limit of each task in minutes (default one day).
        gpus_per_task, cpus_per_task, mem_gb: resources of each task (default 1 GPU, 8 CPUs, 32 GB).

    Returns one row per run of the grid and its teachers: ``{"name", "status", "job_id", "wave"}``, the
    status "cached" or "submitted" (on the local executor: "trained" or "failed"; the students of a
    failed teacher are "skipped"). Raises ``ConfigError`` before anything is read for ``cluster="slurm"``
    on a machine without Slurm (``check_slurm``); on the local executor, ``SweepError`` (the rows in
    ``.rows``) naming each failed run with its error line (``task_error``) once the others have finished.
    """
    if cluster == "slurm":
        check_slurm()
    import submitit

    configs = grid_runs(grid, profile)
    everything = with_upstream(configs)
    rows = {cfg.name: {"name": cfg.name, "status": "cached", "job_id": None, "wave": None} for cfg in everything}
    executor = submitit.AutoExecutor(folder=str(Path(folder or output_root() / "slurm") / "%j"), cluster=cluster)
    executor.update_parameters(name="desupcon", timeout_min=timeout_min, cpus_per_task=cpus_per_task,
                               **({} if cluster == "local" else {"slurm_gpus_per_task": gpus_per_task,
                                                                 "slurm_mem_gb": mem_gb}),
                               **({"slurm_partition": partition} if partition else {}))
    previous, failed, causes = [], set(), {}  # causes: run name -> its error line and log
    for number, wave in enumerate(waves(configs)):
        runnable = [cfg for cfg in wave if not any(upstream.name in failed for upstream in cfg.upstream())]
        for cfg in wave:
            if cfg not in runnable:
                rows[cfg.name]["status"] = "skipped"
                failed.add(cfg.name)
        if previous and cluster != "local":
            executor.update_parameters(slurm_additional_parameters={
                "dependency": "afterok:" + ":".join(job.job_id for job in previous)})
        jobs = executor.map_array(run_worker, [json.dumps(cfg.to_dict()) for cfg in runnable])
        print(f"[slurm] wave {number}: {len(jobs)} run(s) submitted as job array "
              f"{jobs[0].job_id.split('_')[0] if jobs else '-'}", flush=True)
        for cfg, job in zip(runnable, jobs):
            rows[cfg.name].update(status="submitted", job_id=job.job_id, wave=number)
        if cluster == "local":  # no scheduler to hold the next wave: wait here
            for cfg, job in zip(runnable, jobs):
                try:
                    job.result()
                    rows[cfg.name]["status"] = "trained"
                except Exception as err:  # the task's own error, written to its stderr
                    rows[cfg.name]["status"] = "failed"
                    failed.add(cfg.name)
                    causes[cfg.name] = f"{task_error(job, err)} (log: {job.paths.stderr})"
                    print(f"[slurm] failed  {cfg.name}: {causes[cfg.name]}", flush=True)
        previous = jobs
    for row in rows.values():
        print(f"[slurm] {row['status']:<9} {row['name']}" + (f" (job {row['job_id']})" if row["job_id"] else ""))
    failures = [(name, causes.get(name, "its teacher failed")) for name in rows if name in failed]
    if failures:
        raise SweepError.of(failures, len(rows), list(rows.values()))
    return list(rows.values())
