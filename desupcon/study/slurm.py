"""Cluster sweeps: a grid's runs as Slurm job arrays through submitit (as FAIR's self-supervised repositories do).

``submit_sweep("03_lw_supcrd_sweeps", partition="gpu")`` submits the grid in waves by dependency: the
teacher, then its projection head, then every student, each wave one job array whose tasks train one
config each (``desupcon.study.train.train``, one GPU per task). The run cache decides what is submitted,
exactly as for the local runner (``desupcon.study.sweep``): a run whose checkpoints are complete with an
equal config is never resubmitted, and a killed task resumes from its last epoch checkpoint when the
grid is submitted again. On Slurm each wave waits for the previous one with a Slurm ``dependency=afterok`` on it,
so the command returns at once; with submitit's local executor (``cluster="local"``, used by the
tests on CPU) the launcher waits for each wave itself.

Every task sees the submitting shell's environment (``DESUPCON_HOME``, ``DESUPCON_DATA``), so it reads
and writes the same output home; submitit's own logs go to ``<home>/slurm/<job id>_<task>_log.out``.
"""

from __future__ import annotations

import json
from pathlib import Path

from desupcon.core.paths import output_root
from desupcon.methods.distill.config import RunConfig
from desupcon.study.sweep import grid_runs, is_cached, run_worker, with_upstream


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
        cluster: "slurm", or "local" (submitit's local executor: subprocesses on this machine, for tests)
            (default "slurm").
        folder: submitit's folder for pickles and logs (default ``<output home>/slurm``).
        partition: the Slurm partition (default None: the cluster's default).
        timeout_min: time limit of each task in minutes (default one day).
        gpus_per_task, cpus_per_task, mem_gb: resources of each task (default 1 GPU, 8 CPUs, 32 GB).

    Returns one row per run of the grid and its teachers: ``{"name", "status", "job_id", "wave"}``, the
    status "cached" or "submitted" (on the local executor: "trained" or "failed"; the students of a
    failed teacher are "skipped").
    """
    import submitit

    configs = grid_runs(grid, profile)
    everything = with_upstream(configs)
    rows = {cfg.name: {"name": cfg.name, "status": "cached", "job_id": None, "wave": None} for cfg in everything}
    executor = submitit.AutoExecutor(folder=str(Path(folder or output_root() / "slurm") / "%j"), cluster=cluster)
    executor.update_parameters(name="desupcon", timeout_min=timeout_min, cpus_per_task=cpus_per_task,
                               **({} if cluster == "local" else {"slurm_gpus_per_task": gpus_per_task,
                                                                 "slurm_mem_gb": mem_gb}),
                               **({"slurm_partition": partition} if partition else {}))
    previous, failed = [], set()
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
                except Exception as err:  # the task's own error, already in its log
                    rows[cfg.name]["status"] = "failed"
                    failed.add(cfg.name)
                    print(f"[slurm] failed  {cfg.name}: {str(err).strip().splitlines()[-1]} "
                          f"(log: {job.paths.stdout})", flush=True)
        previous = jobs
    for row in rows.values():
        print(f"[slurm] {row['status']:<9} {row['name']}" + (f" (job {row['job_id']})" if row["job_id"] else ""))
    return list(rows.values())
