"""Parallel sweeps: the independent runs of a grid, one worker process per device slot.

``run_sweep("03_lw_supcrd_sweeps", ["0", "1"], per_device=2)`` trains the grid's configs four at a
time, two worker processes on each of GPUs 0 and 1. Each worker is a fresh Python process that
sees only its GPU (``CUDA_VISIBLE_DEVICES``) and runs ``desupcon.study.train.train(cfg)`` on one config,
writing its console output to ``json_results/training_logs/<run>.sweep.log``. Figures are drawn
afterwards from the saved runs (``desupcon.analysis.figures.draw_run``).

The run cache does the bookkeeping: runs whose checkpoints are complete with an equal config are
skipped before any worker starts, and a run killed part-way resumes from its last epoch
checkpoint. Teachers (the teacher and its projection head) are runs of the sweep too and start
before the students that need them, so no two workers ever train the same teacher.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from desupcon.core.errors import CheckpointError, ConfigError, StaleRunError
from desupcon.core.paths import log_path
from desupcon.images.datasets import load_splits
from desupcon.engine.runs import cached_checkpoint
from desupcon.engine.task import TaskConfig
from desupcon.methods import config_from_dict
from desupcon.methods.distill.config import RunConfig
from desupcon.study.experiments import GRIDS, grid as grid_configs
from desupcon.study.profiles import resolve_profile
from desupcon.study.train import train

POLL_SECONDS = 0.2
STOP_SECONDS = 60  # how long an interrupted worker gets to stop before it is killed
DONE = ("cached", "trained")
WORKER = "import sys; from desupcon.study.sweep import run_worker; run_worker(sys.argv[1])"


class SweepError(RuntimeError):
    """Some runs of a sweep failed (the others finished); the message names them and their logs.

    ``rows`` holds every run's row, as ``run_sweep`` would have returned them.
    """

    def __init__(self, message: str, rows: list[dict]):
        super().__init__(message)
        self.rows = rows

    @classmethod
    def of(cls, failures: list[tuple[str, str]], total: int, rows: list[dict]) -> "SweepError":
        """The error of a sweep whose runs ``failures`` (``(run name, cause)``) failed, of ``total`` runs."""
        return cls(f"{len(failures)} of {total} runs failed: " + "; ".join(f"{name}: {cause}" for name, cause in failures),
                   rows)


def error_line(text: str | None, limit: int = 300) -> str:
    """The last non-blank line of a task's output (``text``; where a Python error ends up), cut to ``limit``
    characters (default 300); "no output" where there is none."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return "no output"
    return lines[-1] if len(lines[-1]) <= limit else lines[-1][:limit] + "..."


@dataclass
class Job:
    """One config of a sweep and what became of it."""

    cfg: RunConfig
    status: str = "pending"  # pending, running, then cached, trained or failed
    device: str = "-"
    start: float | None = None  # time.time() when its worker started
    end: float | None = None
    process: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return log_path(self.cfg.name).with_name(f"{self.cfg.name}.sweep.log")

    @property
    def seconds(self) -> float:
        return 0.0 if self.start is None else self.end - self.start

    def row(self) -> dict:
        return {"name": self.cfg.name, "status": self.status, "device": self.device, "seconds": self.seconds,
                "start": self.start, "end": self.end, "log": str(self.log)}


def run_sweep(grid: str | list[RunConfig], devices: list[str], per_device: int = 1,
              profile: str | None = None) -> list[dict]:
    """Train the configs of ``grid`` in parallel, one worker process per device slot.

    Args:
        grid: a notebook or grid name of ``desupcon.study.experiments.GRIDS`` (``"03_lw_supcrd_sweeps"``
            or ``"03_lw_supcrd_sweeps.ipynb"``), or a list of ``RunConfig``.
        devices: one entry per device: a CUDA device id (``"0"``) or ``"cpu"`` for a CPU worker.
        per_device: worker processes per device (default 1; more share a GPU between small runs).
        profile: the profile of a named grid (default None: ``$DESUPCON_PROFILE``, then auto).

    Returns one row per run, the teachers the grid builds on included, after printing them as a
    table: ``{"name", "status", "device", "seconds", "start", "end", "log"}``, the status "cached",
    "trained" or "failed", start and end from ``time.time()`` (None for a run that did not start).
    Raises ``ConfigError`` before anything starts for an unknown grid or a CUDA device id this machine
    does not have, and ``SweepError`` (the rows in ``.rows``) naming each failed run with its error line
    (the last line of its log) and log once the others have finished.
    """
    slots = _slots(devices, per_device)
    _check_devices(devices)
    jobs = [Job(cfg) for cfg in with_upstream(grid_runs(grid, profile))]
    for job in jobs:
        if is_cached(job.cfg):
            job.status = "cached"
    _download([job.cfg.dataset for job in jobs if job.status == "pending"])
    try:
        _schedule(jobs, slots, threads=max(1, (os.cpu_count() or 1) // len(slots)))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_interrupted(jobs, grid)) from None
    print(_table(jobs))
    failed = [job for job in jobs if job.status == "failed"]
    if failed:
        raise SweepError.of([(job.cfg.name, _cause(job)) for job in failed], len(jobs), [job.row() for job in jobs])
    return [job.row() for job in jobs]


def _interrupted(jobs: list[Job], grid) -> str:
    """After Ctrl-C: stop the running workers (each saves nothing more; its run resumes from its last saved
    epoch) and say in one line what finished, what was interrupted and how to continue."""
    running = [job for job in jobs if job.status == "running"]
    for job in running:
        job.process.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reached them already; a kill does not
    for job in running:
        try:
            job.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            job.process.kill()
            job.process.wait()
    finished = sum(job.status in DONE for job in jobs)
    waiting = sum(job.status == "pending" for job in jobs)
    names = ", ".join(job.cfg.name for job in running) or "none"
    what = grid if isinstance(grid, str) else "GRID"
    return (f"[interrupted] sweep: {finished} of {len(jobs)} runs finished, {len(running)} interrupted ({names}: each "
            f"resumes from its last saved epoch), {waiting} not started; continue with the same command "
            f"(python -m desupcon sweep {what} ...): finished runs load from the cache")


def _cause(job: Job) -> str:
    """Why a failed job failed: its teacher, the signal that killed its worker, or the last line of its log."""
    if job.start is None:
        return "its teacher failed"
    code = job.process.returncode
    why = f"killed by signal {-code}" if code < 0 else error_line(job.log.read_text(errors="replace"))
    return f"{why} (log: {job.log})"


def _slots(devices: list[str], per_device: int) -> list[str]:
    """Worker slots, devices interleaved (``["0", "1", "0", "1"]`` for two per device)."""
    if not devices:
        raise ConfigError("devices (--gpus) is empty: give CUDA device ids such as 0,1 or cpu entries")
    bad = [d for d in devices if d != "cpu" and not d.isdigit()]
    if bad:
        raise ConfigError(f"devices (--gpus) {bad}: each entry must be a CUDA device id such as 0, or cpu")
    if per_device < 1:
        raise ConfigError(f"per_device (--per-device) = {per_device}: must be >= 1")
    return [d for _ in range(per_device) for d in devices]


def _check_devices(devices: list[str]):
    """Every CUDA device id of ``devices`` exists here (``torch.cuda.device_count()``), else one-line ``ConfigError``."""
    import torch

    wanted = sorted({int(d) for d in devices if d != "cpu"})
    if not wanted:
        return
    count = torch.cuda.device_count()
    missing = [d for d in wanted if d >= count]
    if not missing:
        return
    ids = ",".join(str(d) for d in missing)
    if count == 0:
        raise ConfigError(f"devices (--gpus) {ids}: this machine has no CUDA device (torch.cuda.device_count() = 0); "
                          f"use --gpus cpu,cpu on a machine without CUDA")
    have = "1 CUDA device (id 0)" if count == 1 else f"{count} CUDA devices (ids 0-{count - 1})"
    raise ConfigError(f"devices (--gpus) {ids}: no such CUDA device, this machine has {have}; "
                      f"use --gpus {','.join(map(str, range(count)))}, or --gpus cpu,cpu for CPU workers")


def grid_runs(grid: str | list[RunConfig], profile: str | None) -> list[RunConfig]:
    """The configs of ``grid`` (a grid name of ``GRIDS``, or a list of configs as it is) under ``profile``."""
    if not isinstance(grid, str):
        return list(grid)

    resolved, reason = resolve_profile(profile)
    try:
        configs = grid_configs(grid, resolved)
    except ValueError:
        if grid.removesuffix(".ipynb").rsplit("/", 1)[-1] in GRIDS:  # a known grid failed for another reason
            raise
        raise ConfigError(f"sweep grid '{grid}' is unknown: choose one of {', '.join(sorted(GRIDS))} "
                          f"(a notebook name, with or without .ipynb)") from None
    print(f"[sweep] {grid}, profile: {resolved.name} ({reason})")
    return configs


def with_upstream(configs: list[TaskConfig]) -> list[TaskConfig]:
    """``configs`` and the runs they build on (``upstream()``: teachers), each once, every teacher before its students."""
    ordered: dict[str, TaskConfig] = {}

    def add(cfg: TaskConfig):
        for upstream in cfg.upstream():
            add(upstream)
        ordered.setdefault(cfg.name, cfg)

    for cfg in configs:
        add(cfg)
    return list(ordered.values())


def is_cached(cfg: TaskConfig) -> bool:
    """Every seed of ``cfg`` has a complete checkpoint with an equal config (a stale or unreadable
    checkpoint is left to the worker, which fails with the run cache's message)."""
    try:
        ckpts = [cached_checkpoint(cfg.for_seed(seed), cfg.run_name(seed)) for seed in cfg.seeds]
    except (StaleRunError, CheckpointError):
        return False
    return all(ckpt is not None and ckpt["complete"] for ckpt in ckpts)


def _download(datasets: list[str]):
    """Fetch each dataset here once, rather than in several workers at the same time."""

    for name in sorted(set(datasets) - {"digits"}):  # the embedded digits need no download
        load_splits(name)


def _schedule(jobs: list[Job], slots: list[str], threads: int):
    """Run the pending jobs: whenever a slot is free it takes the first job whose teacher is done."""
    by_name = {job.cfg.name: job for job in jobs}
    free, running = list(slots), []
    while any(job.status in ("pending", "running") for job in jobs):
        for job in [job for job in running if job.process.poll() is not None]:
            _finish(job)
            running.remove(job)
            free.append(job.device)
        for job in jobs:
            if job.status != "pending" or not free:
                continue
            teachers = [by_name[upstream.name] for upstream in job.cfg.upstream()]
            failed = [teacher.cfg.name for teacher in teachers if teacher.status == "failed"]
            if failed:
                job.status = "failed"
                print(f"[sweep] failed  {job.cfg.name}: its teacher {failed[0]} failed", flush=True)
            elif all(teacher.status in DONE for teacher in teachers):
                _launch(job, free.pop(0), threads)
                running.append(job)
        time.sleep(POLL_SECONDS)


def _launch(job: Job, device: str, threads: int):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "" if device == "cpu" else device, "OMP_NUM_THREADS": str(threads)}
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "w") as log:
        job.process = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(job.cfg.to_dict())],
                                       stdout=log, stderr=subprocess.STDOUT, env=env)
    job.status, job.device, job.start = "running", device, time.time()
    print(f"[sweep] start   {job.cfg.name} on {device if device == 'cpu' else 'cuda:' + device} (log: {job.log})",
          flush=True)


def _finish(job: Job):
    job.end = time.time()
    job.status = "trained" if job.process.returncode == 0 else "failed"
    print(f"[sweep] {job.status:<7} {job.cfg.name} in {job.seconds:.1f} s", flush=True)
    if job.status == "failed":  # the end of its log, where the error is
        for line in job.log.read_text().strip().splitlines()[-5:]:
            print(f"  {line}", flush=True)


def _table(jobs: list[Job]) -> str:
    width = max(len("run"), *(len(job.cfg.name) for job in jobs))
    lines = [f"{'run':<{width}}  {'status':<8}  {'device':<6}  {'seconds':>8}"]
    lines += [f"{job.cfg.name:<{width}}  {job.status:<8}  {job.device:<6}  {job.seconds:>8.1f}" for job in jobs]
    return "\n".join(lines)


def run_worker(config_json: str):
    """Body of one worker process: train (or resume) the config in ``config_json`` (``to_dict`` of a run's config)."""
    train(config_from_dict(json.loads(config_json)))
